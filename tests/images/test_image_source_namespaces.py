"""`image build --from-vm/--from-pvc NS/NAME` on the kubevirt backend: only an image source
namespace (the admission policy would refuse the export anywhere else), refused before anything
is contacted."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from labrador.cli.main import app


@pytest.mark.parametrize("flag", ["--from-vm", "--from-pvc"])
def test_a_source_outside_the_image_source_namespaces_is_refused(tmp_path: Path, flag: str) -> None:
    env = {"LABRADOR_CLUSTER_BACKEND": "kubevirt", "LABRADOR_TEMPORAL_ADDRESS": "127.0.0.1:1",
           "LABRADOR_DATA_DIR": str(tmp_path), "XDG_STATE_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path),
           "LABRADOR_IMAGE_SOURCE_NAMESPACES": "labrador-golden,team-images"}
    result = CliRunner().invoke(app, ["image", "build", "--class", "cp-v1-31", flag, "kube-system/etcd"], env=env)
    assert result.exit_code == 1
    assert (f"{flag}: namespace 'kube-system' is not in image_source_namespaces (labrador-golden, team-images)"
            in " ".join(result.stderr.split()))
    # an allowed namespace passes this check and goes on to Temporal (unreachable here: exit 3)
    allowed = CliRunner().invoke(app, ["image", "build", "--class", "cp-v1-31", flag, "team-images/vm1"], env=env)
    assert allowed.exit_code == 3, allowed.stderr
