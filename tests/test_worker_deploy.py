"""deploy/: one worker Deployment per build (Worker Versioning), and pods that outlive the graceful shutdown."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from labrador.settings import Settings
from labs.models import parse_duration

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
BUILDS = sorted(p.parent for p in (DEPLOY / "builds").glob("*/kustomization.yaml"))


def worker_template() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "worker" / "worker.yaml").read_text()) if d]
    assert [d["kind"] for d in docs] == ["Deployment"]
    return docs[0]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_the_shared_base_holds_no_worker_deployment() -> None:
    # A release adds a Deployment for its build next to the old ones: none is rolled in place.
    base = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    kinds = [d["kind"] for name in base["resources"] for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    names = [d["metadata"]["name"] for name in base["resources"]
             for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d and d["kind"] == "Deployment"]
    assert "Deployment" in kinds and "labrador-worker" not in names


def test_pods_get_longer_to_stop_than_the_workers_graceful_shutdown() -> None:
    deployment = worker_template()
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    shutdown = parse_duration(env_of(deployment)["LABRADOR_WORKER_GRACEFUL_SHUTDOWN"])
    assert isinstance(shutdown, timedelta)
    assert grace >= shutdown.total_seconds() + 30  # + the time to stop polling and close connections


def test_the_template_alone_refuses_to_start() -> None:
    env = env_of(worker_template())
    with pytest.raises(ValidationError, match="build ID"):
        Settings(worker_deployment_name=env["LABRADOR_WORKER_DEPLOYMENT_NAME"],
                 worker_build_id=env["LABRADOR_WORKER_BUILD_ID"])


@pytest.mark.parametrize("build", BUILDS, ids=[b.name for b in BUILDS])
def test_each_build_is_its_own_deployment_with_its_own_pods(build: Path) -> None:
    build_id = build.name
    kustomization = yaml.safe_load((build / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../../worker"]
    assert kustomization["nameSuffix"] == f"-{build_id}"  # labrador-worker-<build ID>
    [labels] = kustomization["labels"]
    assert labels["pairs"] == {"labrador.io/build": build_id} and labels["includeSelectors"] is True
    [image] = kustomization["images"]
    assert image["name"] == "labrador-worker" and image["newTag"] == build_id
    patched_env = [e for p in kustomization["patches"] for c in
                   yaml.safe_load(p["patch"])["spec"]["template"]["spec"]["containers"] for e in c["env"]]
    assert {"name": "LABRADOR_WORKER_BUILD_ID", "value": build_id} in patched_env
    Settings(worker_deployment_name="labrador", worker_build_id=build_id)  # a valid build ID


def test_there_is_an_example_build() -> None:
    assert BUILDS, "deploy/builds/<build ID>/ shows how a build is deployed"
