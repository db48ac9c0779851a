"""`lab_dns` and `ssh_source_ranges` reach the objects the worker writes: the backend built from
settings, as worker.py builds it (kubeconfig, list+watch cache), wires and exposes a session on the
API emulator; the policies and Service stored there are what tests/kubevirt/test_network_reachability.py
evaluates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.kubevirt import manifests as M
from cluster.kubevirt.backend import KubeVirtCluster
from cluster.models import SessionWiring
from cluster.settings import Settings
from tests.kubevirt.emulator import POLICIES, SERVICES, LabEmulator
from tests.kubevirt.test_backend import claimed_session, ref

pytestmark = pytest.mark.timeout(30)


def kubeconfig(emulator: LabEmulator, path: Path) -> Path:
    server = str(emulator.url).rstrip("/")
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emu",
        "clusters": [{"name": "emu", "cluster": {"server": server}}],
        "users": [{"name": "emu", "user": {}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}],
    }))
    return path


def dns_ports(policy: dict[str, Any]) -> list[int]:
    return [port["port"] for rule in policy["spec"].get("egress", []) for port in rule.get("ports", [])
            if port.get("port") == 53]


@pytest.mark.parametrize("narrowed", [False, True], ids=["defaults", "lab_dns none + ssh_source_ranges"])
async def test_the_settings_shape_what_the_worker_writes(
    emulator: LabEmulator, platform_key: tuple[Path, str], tmp_path: Path, narrowed: bool
) -> None:
    extra: dict[str, Any] = {"lab_dns": "none", "ssh_source_ranges": ["203.0.113.0/24"]} if narrowed else {}
    settings = Settings(cluster_backend="kubevirt", kube_config=kubeconfig(emulator, tmp_path / "kubeconfig"),
                        ssh_private_key=platform_key[0], **extra)
    cluster = KubeVirtCluster.from_settings(settings)
    try:
        await claimed_session(cluster, "s1")
        await cluster.wire(SessionWiring(session=ref("s1"), controlplane="s1-cp", workers=["s1-w1"]))
        await cluster.expose("s1", "s1-cp")
    finally:
        await cluster.close()
    for ns in ("lab-s1-cp", "lab-s1-w1"):
        policy = emulator.live(POLICIES, ns, M.session_policy_name("s1"))
        assert policy is not None
        assert dns_ports(policy) == ([] if narrowed else [53, 53]), policy["spec"]  # UDP and TCP
    service = emulator.live(SERVICES, "lab-s1-cp", M.ssh_service_name("s1"))
    ingress = emulator.live(POLICIES, "lab-s1-cp", M.ssh_policy_name("s1"))
    assert service is not None and ingress is not None
    blocks = [peer["ipBlock"]["cidr"] for rule in ingress["spec"]["ingress"] for peer in rule.get("from", [])
              if "ipBlock" in peer]
    if narrowed:
        assert service["spec"]["externalTrafficPolicy"] == "Local"
        assert blocks == ["203.0.113.0/24"]
    else:
        assert "externalTrafficPolicy" not in service["spec"] and blocks == []
