"""Every rendered manifest passes the strict schemas, and says what the platform needs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from cluster.kubevirt import labels as L
from cluster.kubevirt import manifests as M
from cluster.kubevirt.published_images import configmap_manifest
from cluster.models import NodeSpec, SessionRef
from labs.models import ContainerDiskSource, PvcCloneSource, PvcRef, Role
from tests.kubevirt import schemas

IMAGE = "registry.example.test/labs/cp-1-29@sha256:" + "b" * 64
SESSION = SessionRef(session_id="s-alice-1a2b3c", workflow_id="lab-session/alice", run_id="run-1")


def spec(node_id: str = "cp-1", *, role: Role = Role.CONTROLPLANE, disk: Any = None,
         session: SessionRef | None = None) -> NodeSpec:
    return NodeSpec(node_id=node_id, node_class="cp-1-29", role=role, image=IMAGE, kubernetes_version="1.29.3",
                    cpu_cores=2, memory="1536Mi", disk=disk or ContainerDiskSource(), session=session)


CLONE = PvcCloneSource(pvc=PvcRef(namespace="golden", name="cp-1-29"), size="12Gi")


def all_manifests() -> dict[str, dict[str, Any]]:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return {
        "namespace": M.namespace(spec(), now),
        "namespace-claimed": M.namespace(spec(session=SESSION), now),
        "vm-containerdisk": M.virtual_machine(spec()),
        "vm-pvcclone": M.virtual_machine(spec(disk=CLONE)),
        "secret": M.ssh_key_secret("cp-1", "ssh-ed25519 AAAAC3Nza test"),
        "default-deny": M.default_deny_policy("cp-1"),
        "session-policy": M.session_policy("cp-1", SESSION.session_id, "labrador"),
        "ssh-service": M.ssh_service("cp-1", SESSION.session_id),
        "ssh-policy": M.ssh_ingress_policy("cp-1", SESSION.session_id),
        "datavolume": M.datavolume_clone("cp-1", CLONE),
        "published-images": configmap_manifest("labrador", {"cp-1-29": "{}"}),
    }


@pytest.mark.parametrize("name", sorted(all_manifests()))
def test_manifest_is_valid_against_strict_schemas(name: str) -> None:
    assert schemas.errors(all_manifests()[name]) == []


def test_strict_schemas_catch_a_typo() -> None:
    vm = M.virtual_machine(spec())
    vm["spec"]["template"]["spec"]["domain"]["cpu"]["coers"] = 2
    assert any("coers" in e for e in schemas.errors(vm))
    dv = M.datavolume_clone("cp-1", CLONE)
    dv["spec"]["source"]["pvc"]["nmae"] = "x"
    assert any("nmae" in e for e in schemas.errors(dv))
    policy = M.default_deny_policy("cp-1")
    policy["spec"]["podSelectr"] = {}
    assert schemas.errors(policy)


def test_vm_boots_the_pinned_image_with_bridge_networking_and_the_platform_key() -> None:
    vm = M.virtual_machine(spec())
    template = vm["spec"]["template"]
    pod = template["spec"]
    assert vm["spec"]["runStrategy"] == "Always"
    assert pod["volumes"][0]["containerDisk"]["image"] == IMAGE
    assert vm["metadata"]["annotations"][L.IMAGE] == IMAGE
    assert template["metadata"]["labels"][L.IMAGE_HASH] == L.image_hash(IMAGE)
    assert all(len(v) <= 63 and ":" not in v for v in template["metadata"]["labels"].values())
    assert pod["domain"]["devices"]["interfaces"] == [{"name": "default", "bridge": {}}]
    assert pod["networks"] == [{"name": "default", "pod": {}}]
    assert pod["domain"]["cpu"]["cores"] == 2 and pod["domain"]["memory"]["guest"] == "1536Mi"
    assert pod["readinessProbe"]["tcpSocket"]["port"] == 22
    assert pod["accessCredentials"] == [{"sshPublicKey": {
        "source": {"secret": {"secretName": M.SSH_KEY_SECRET}}, "propagationMethod": {"noCloud": {}}}}]
    cloud_init = next(v for v in pod["volumes"] if "cloudInitNoCloud" in v)["cloudInitNoCloud"]["userData"]
    assert cloud_init.startswith("#cloud-config\n")
    config = yaml.safe_load(cloud_init)
    assert config["hostname"] == "cp-1" and config["disable_root"] is False


def test_state_and_session_labels_never_reach_the_vm_template() -> None:
    vm = M.virtual_machine(spec(session=SESSION))
    template_labels = vm["spec"]["template"]["metadata"]["labels"]
    assert L.STATE not in template_labels and L.SESSION not in template_labels
    assert vm["metadata"]["labels"][L.SESSION] == SESSION.session_id  # informative copy on the VM object
    assert template_labels == {
        L.MANAGED_BY: "labrador", L.NODE_ID: "cp-1", L.NODE_CLASS: "cp-1-29", L.ROLE: "controlplane",
        L.IMAGE_HASH: L.image_hash(IMAGE),
    }


def test_namespace_carries_state_session_and_run_of_a_cold_provisioned_node() -> None:
    ns = M.namespace(spec(session=SESSION), datetime(2026, 1, 1, tzinfo=UTC))
    assert ns["metadata"]["name"] == "lab-cp-1"
    assert ns["metadata"]["labels"][L.STATE] == "claimed"
    assert ns["metadata"]["labels"][L.SESSION] == SESSION.session_id
    assert ns["metadata"]["annotations"][L.WORKFLOW_ID] == "lab-session/alice"
    assert ns["metadata"]["annotations"][L.RUN_ID] == "run-1"
    warm = M.namespace(spec(), datetime(2026, 1, 1, tzinfo=UTC))
    assert warm["metadata"]["labels"][L.STATE] == "provisioning" and L.SESSION not in warm["metadata"]["labels"]


def test_pvc_clone_vm_uses_the_datavolume() -> None:
    vm = M.virtual_machine(spec(disk=CLONE))
    dv = M.datavolume_clone("cp-1", CLONE)
    root = vm["spec"]["template"]["spec"]["volumes"][0]
    assert root == {"name": "rootdisk", "dataVolume": {"name": dv["metadata"]["name"]}}
    assert dv["spec"]["source"] == {"pvc": {"namespace": "golden", "name": "cp-1-29"}}
    assert dv["spec"]["storage"]["resources"]["requests"]["storage"] == "12Gi"


def test_claim_patch_has_a_resource_version_precondition() -> None:
    patch = M.claim_patch("42", SESSION)
    assert patch["metadata"]["resourceVersion"] == "42"
    assert patch["metadata"]["labels"] == {L.STATE: "claimed", L.SESSION: SESSION.session_id}


def test_default_deny_isolates_only_the_vm_pod() -> None:
    policy = M.default_deny_policy("cp-1")["spec"]
    assert policy["podSelector"] == {"matchLabels": {L.MANAGED_BY: "labrador", L.NODE_ID: "cp-1"}}
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["ingress"] == [] and policy["egress"] == []


def _peers(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [peer for rule in rules for peer in rule.get("from", rule.get("to", []))]


def test_session_policy_allows_only_the_session_dns_and_orchestrator_ssh() -> None:
    policy = M.session_policy("cp-1", SESSION.session_id, "labrador")["spec"]
    # Every rule names its peers: an empty peer list would mean "everyone".
    for rule in policy["ingress"]:
        assert rule.get("from")
    for rule in policy["egress"]:
        assert rule.get("to")
    for peer in _peers(policy["ingress"]) + _peers(policy["egress"]):
        assert "ipBlock" not in peer  # so no internet, no 169.254.0.0/16, no API server
        assert "namespaceSelector" in peer and "podSelector" in peer  # one peer, both: AND
    session_peer = {"namespaceSelector": {"matchLabels": {L.MANAGED_BY: "labrador", L.SESSION: SESSION.session_id}},
                    "podSelector": {"matchLabels": {L.MANAGED_BY: "labrador"}}}
    assert policy["ingress"][0] == {"from": [session_peer]}
    assert policy["egress"][0] == {"to": [session_peer]}
    dns = policy["egress"][1]
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)]
    ssh = policy["ingress"][1]
    assert ssh["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "labrador"}
    assert ssh["ports"] == [{"protocol": "TCP", "port": 22}]


def test_ssh_service_targets_the_vm_pod_on_port_22() -> None:
    service = M.ssh_service("cp-1", SESSION.session_id)
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["selector"] == {L.MANAGED_BY: "labrador", L.NODE_ID: "cp-1"}
    assert service["spec"]["ports"][0]["port"] == 22 and service["spec"]["ports"][0]["targetPort"] == 22
    policy = M.ssh_ingress_policy("cp-1", SESSION.session_id)["spec"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": 22}]}]
    assert policy["policyTypes"] == ["Ingress"]


def test_names_are_dns_labels_even_for_long_ids() -> None:
    long_id = "n" * 63
    names = M.node_names(long_id)
    assert len(names.namespace) <= 63 and len(names.datavolume) <= 63
    assert len(M.session_policy_name("s" * 40)) <= 63 and len(M.ssh_service_name("s" * 40)) <= 63


def test_status_shapes_the_tests_feed_use_real_field_names() -> None:
    """The adapter tests play virt-controller and CDI; their status bodies must be what the real
    controllers write, or status parsing would be tested against invented fields."""
    from tests.kubevirt.emulator import VirtController

    vm = M.virtual_machine(spec()) | {"status": VirtController.vm_status_body("ErrImagePull", "manifest unknown")}
    vmi = VirtController.vmi_body("lab-cp-1", "cp-1", "Running", ready=True, ip="10.244.0.9", message="ok")
    dv = M.datavolume_clone("cp-1", CLONE) | {
        "status": VirtController.dv_status_body("CloneInProgress", "45.0%", 1, "source in use")
    }
    for doc in (vm, vmi, dv):
        assert schemas.errors(doc) == []
    vmi["status"]["interfaces"][0]["ip"] = "typo"
    assert schemas.errors(vmi)
