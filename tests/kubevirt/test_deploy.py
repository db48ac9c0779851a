"""deploy/: valid objects, and RBAC that grants exactly what the backend calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.kubevirt import labels as L
from cluster.kubevirt.api import CLUSTER, PERMISSIONS, WORKER_NAMESPACE
from tests.kubevirt import schemas

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    # The worker Deployment is one per build (deploy/builds/<build ID>/ over deploy/worker/).
    for name in [*kustomization["resources"], "worker/worker.yaml"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_kustomization_lists_every_manifest_file() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


@pytest.mark.parametrize("index", range(len(documents())))
def test_deploy_objects_are_valid(index: int) -> None:
    assert schemas.errors(documents()[index]) == []


def test_rbac_grants_exactly_the_declared_calls() -> None:
    (cluster_role,) = of_kind("ClusterRole")
    (role,) = of_kind("Role")
    declared_cluster = {(g, r, v) for g, r, v, scope in PERMISSIONS if scope == CLUSTER}
    declared_namespace = {(g, r, v) for g, r, v, scope in PERMISSIONS if scope == WORKER_NAMESPACE}
    assert granted(cluster_role["rules"]) == declared_cluster
    assert granted(role["rules"]) == declared_namespace


def test_rbac_has_no_wildcards_and_secrets_are_write_only() -> None:
    for role in of_kind("ClusterRole") + of_kind("Role"):
        for rule in role["rules"]:
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        secret_verbs = {v for g, r, v in granted(role["rules"]) if (g, r) == ("", "secrets")}
        assert secret_verbs <= {"create", "delete"}
    assert {v for g, r, v in granted(of_kind("ClusterRole")[0]["rules"]) if r == "secrets"} == {"create", "delete"}


def named(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in of_kind(kind) if d["metadata"]["name"] == name]
    return found


def test_bindings_name_the_worker_service_account() -> None:
    account = named("ServiceAccount", "labrador-worker")
    for binding in of_kind("ClusterRoleBinding") + of_kind("RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                        "namespace": account["metadata"]["namespace"]}]


def test_worker_pods_carry_the_label_lab_vms_accept_ssh_from() -> None:
    deployment = named("Deployment", "labrador-worker")
    pod = deployment["spec"]["template"]
    assert L.WORKER_POD_LABELS.items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["serviceAccountName"] == "labrador-worker"
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["LABRADOR_CLUSTER_BACKEND"]["value"] == "kubevirt"
    assert env["LABRADOR_TEMPORAL_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "labrador-temporal"
    assert env["LABRADOR_CODEC_KEYS_FILE"]["value"].startswith("/etc/labrador/codec/")
    mounted = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounted["codec"]["secret"]["secretName"] == "labrador-codec"
