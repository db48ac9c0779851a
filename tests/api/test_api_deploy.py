"""deploy/api.yaml: the API in its own Deployment with no Kubernetes access, ready when Temporal answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from labrador.api.server import split_address
from tests.kubevirt import schemas

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "api.yaml").read_text()) if d]


def of(kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs() if d["kind"] == kind]
    return found


def test_api_objects_are_valid_and_listed() -> None:
    assert "api.yaml" in yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    for doc in docs():
        assert schemas.errors(doc) == []


def test_the_api_has_no_kubernetes_access() -> None:
    account = of("ServiceAccount")
    pod = of("Deployment")["spec"]["template"]["spec"]
    assert account["automountServiceAccountToken"] is False and pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    everything = [d for name in yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
                  for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    for binding in (d for d in everything if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert all(s["name"] != account["metadata"]["name"] for s in binding["subjects"])
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["LABRADOR_PUBLISHED_IMAGES_DIR"]  # read from a mounted ConfigMap, not the Kubernetes API
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["published-images"]["configMap"]["name"] == "labrador-published-images"


def test_same_image_as_the_worker_probes_and_service() -> None:
    worker = yaml.safe_load((DEPLOY / "worker" / "worker.yaml").read_text())
    pod = of("Deployment")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["image"] == worker["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    _host, port = split_address(env["LABRADOR_API_ADDRESS"])
    assert {"name": "http", "containerPort": port} in container["ports"]
    assert env["LABRADOR_API_KEYS_FILE"].startswith("/etc/labrador/api/")
    service = of("Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
