"""deploy/admission-policy.yaml, evaluated with cel-python against every object labrador writes
(all admitted) and against hostile writes with the worker's token (each refused, with the
policy's message). No API server: tests/kubevirt/admission.py plays its admission step."""

from __future__ import annotations

import copy
import inspect
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.kubevirt import builder as B
from cluster.kubevirt import export as E
from cluster.kubevirt import labels as L
from cluster.kubevirt import manifests as M
from cluster.kubevirt.api import PERMISSIONS
from cluster.kubevirt.published_images import CONFIGMAP_NAME, configmap_manifest
from cluster.models import NodeSpec, NodeState, SessionRef
from cluster.naming import node_namespace
from labrador.settings import Settings
from labs.models import ContainerDiskSource, NodeClass, PvcCloneSource, PvcRef, Role
from tests.kubevirt import schemas
from tests.kubevirt.admission import Decision, Request, as_stored_namespace, decide, merge_patch, plain_namespace

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
IMAGE = "registry.example.test/labs/cp-1-29@sha256:" + "b" * 64
SESSION = SessionRef(session_id="s-alice-1a2b3c", workflow_id="lab-session/alice", run_id="run-1")
SOURCE_NS = Settings().image_source_namespaces[0]
CLONE = PvcCloneSource(pvc=PvcRef(namespace=SOURCE_NS, name="cp-1-29"), size="12Gi")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def policy() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((DEPLOY / "admission-policy.yaml").read_text()))
    (found,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    return found


def binding() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((DEPLOY / "admission-policy.yaml").read_text()))
    (found,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    return found


def message(fragment: str) -> str:
    """The policy's message containing `fragment` (so a test names the rule it expects)."""
    (found,) = [v["message"] for v in policy()["spec"]["validations"] if fragment in v["message"]]
    return found


def spec(node_id: str = "cp-1", *, disk: Any = None, session: SessionRef | None = None) -> NodeSpec:
    return NodeSpec(node_id=node_id, node_class="cp-1-29", role=Role.CONTROLPLANE, image=IMAGE,
                    kubernetes_version="1.29.3", cpu_cores=2, memory="1536Mi", disk=disk or ContainerDiskSource(),
                    session=session)


def lab_ns(session: SessionRef | None = SESSION) -> dict[str, Any]:
    return as_stored_namespace(M.namespace(spec(session=session), NOW))


def builder_class() -> NodeClass:
    return NodeClass.model_validate({
        "name": "cp-1-29", "role": "controlplane", "kubernetes_version": "1.29.3", "image": IMAGE,
        "cpu_cores": 2, "memory": "1536Mi",
        "build": {"base_image": "quay.io/containerdisks/ubuntu:24.04", "install_script": "apt-get install -y x",
                  "disk_size": "12Gi"}})


def create(obj: dict[str, Any], ns: dict[str, Any] | None = None) -> Request:
    return Request("CREATE", obj, None, ns)


def update(old: dict[str, Any], patch: dict[str, Any], ns: dict[str, Any] | None = None) -> Request:
    return Request("UPDATE", merge_patch(old, patch), old, ns)


def delete(old: dict[str, Any], ns: dict[str, Any] | None = None) -> Request:
    return Request("DELETE", None, old, ns)


def pvc(name: str, namespace: str) -> dict[str, Any]:
    # Created by CDI for the DataVolume, not by labrador: no labels of ours.
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace}}


def labrador_writes() -> dict[str, Request]:
    """Every write the worker makes (cluster/kubevirt/backend.py, export.py, builder.py,
    published_images.py), with the object it sends."""
    warm_ns = as_stored_namespace(M.namespace(spec(), NOW))
    claimed = lab_ns()
    vm = M.virtual_machine(spec())
    source_ns = plain_namespace(SOURCE_NS)
    own_ns = plain_namespace("labrador")
    export = E.export_manifest(SOURCE_NS, "labrador-export-builder-k1", "VirtualMachine", "builder")
    token = E.token_secret_manifest(SOURCE_NS, export["metadata"]["name"], "t0ken")
    builder = B.builder_vm_manifest("builder", SOURCE_NS, builder_class())
    published = configmap_manifest("labrador", {"cp-1-29": "{}"})
    dv = M.datavolume_clone("cp-1", CLONE)
    writes = {
        # provision
        "create namespace (warm)": create(M.namespace(spec(), NOW)),
        "create namespace (cold, claimed)": create(M.namespace(spec(session=SESSION), NOW)),
        "create default-deny": create(M.default_deny_policy("cp-1"), warm_ns),
        "create ssh key secret": create(M.ssh_key_secret("cp-1", "ssh-ed25519 AAAAC3Nza test"), warm_ns),
        "create datavolume": create(dv, warm_ns),
        "create vm (containerDisk)": create(vm, warm_ns),
        "create vm (pvcClone)": create(M.virtual_machine(spec(disk=CLONE)), warm_ns),
        # clone follower
        "patch clone annotations": update(warm_ns, {"metadata": {"annotations": {L.CLONE_ATTEMPT: "2"}}}),
        "delete datavolume": delete(dv, warm_ns),
        "delete pvc": delete(pvc(dv["metadata"]["name"], "lab-cp-1"), warm_ns),
        # pool and claims
        "patch free": update(warm_ns, M.free_patch("7")),
        "patch vm state": update(vm, M.state_patch(NodeState.FREE), warm_ns),
        "patch claim": update(warm_ns, M.claim_patch("8", SESSION)),
        "patch vm claimed": update(vm, M.state_patch(NodeState.CLAIMED, SESSION), claimed),
        "patch deleting": update(warm_ns, M.deleting_patch("9")),
        "delete namespace": delete(claimed),
        # session network and exposure
        "create session policy": create(M.session_policy("cp-1", SESSION.session_id, "labrador"), claimed),
        "create ssh service": create(M.ssh_service("cp-1", SESSION.session_id), claimed),
        "create ssh policy": create(M.ssh_ingress_policy("cp-1", SESSION.session_id), claimed),
        "delete session policy": delete(M.session_policy("cp-1", SESSION.session_id, "labrador"), claimed),
        "delete ssh service": delete(M.ssh_service("cp-1", SESSION.session_id), claimed),
        "delete ssh policy": delete(M.ssh_ingress_policy("cp-1", SESSION.session_id), claimed),
        # published images
        "create published images": create(published, own_ns),
        "patch published images": update(published, {"data": {"cp-1-29": '{"x": 1}'}}, own_ns),
        # image pipeline
        "create export token": create(token, source_ns),
        "create export": create(export, source_ns),
        "delete export": delete(export, source_ns),
        "delete export token": delete(token, source_ns),
        "create builder vm": create(builder, source_ns),
        "delete builder vm": delete(builder, source_ns),
    }
    for name, decided in sensitive_variants().items():
        writes[name] = decided
    return writes


def sensitive_variants() -> dict[str, Request]:
    """Renderings that depend on settings (lab_dns, ssh_source_ranges): still admitted."""
    claimed = lab_ns()
    writes: dict[str, Request] = {}
    for params in _settings_variants():
        label = ",".join(f"{k}={v}" for k, v in params.items())
        writes[f"create session policy ({label})"] = create(
            M.session_policy("cp-1", SESSION.session_id, "labrador", **_policy_kwargs(params)), claimed)
        writes[f"create ssh policy ({label})"] = create(
            M.ssh_ingress_policy("cp-1", SESSION.session_id, **_ssh_kwargs(params)), claimed)
        writes[f"create ssh service ({label})"] = create(
            M.ssh_service("cp-1", SESSION.session_id, **_ssh_kwargs(params)), claimed)
    return writes


def _settings_variants() -> list[dict[str, Any]]:
    return [{"lab_dns": "none"}, {"ssh_source_ranges": ("203.0.113.0/24", "2001:db8::/32")}]


def _policy_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    return {"lab_dns": params["lab_dns"]} if "lab_dns" in params else {}


def _ssh_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    return {"source_ranges": params["ssh_source_ranges"]} if "ssh_source_ranges" in params else {}


@pytest.mark.parametrize("name", sorted(labrador_writes()))
def test_every_write_of_labrador_is_admitted(name: str) -> None:
    request = labrador_writes()[name]
    decision = decide(policy(), request)
    assert decision.matched
    assert decision.refusals == []
    # What we feed the policy is a valid object (no schema here for VirtualMachineExport).
    if request.object is not None and request.object["kind"] != "VirtualMachineExport":
        assert schemas.errors(request.object) == []


def test_every_manifest_function_is_covered() -> None:
    """A new manifest function must be added to `labrador_writes` (and so to the policy's test)."""
    covered = {"namespace", "claim_patch", "state_patch", "free_patch", "deleting_patch", "ssh_key_secret",
               "virtual_machine", "datavolume_clone", "default_deny_policy", "session_policy", "ssh_service",
               "ssh_ingress_policy"}
    helpers = {"node_names", "session_policy_name", "ssh_service_name", "ssh_policy_name", "initial_state",
               "user_data", "dns_label", "node_namespace", "quantity_bytes", "dataclass"}
    public = {name for name, fn in inspect.getmembers(M, inspect.isfunction) if not name.startswith("_")}
    assert public - helpers == covered
    assert {n for n, _ in inspect.getmembers(E, inspect.isfunction) if n.endswith("_manifest")} == {
        "export_manifest", "token_secret_manifest"}
    assert {n for n, _ in inspect.getmembers(B, inspect.isfunction) if n.endswith("_manifest")} == {
        "builder_vm_manifest"}


def _vm(**pod_changes: Any) -> dict[str, Any]:
    vm = M.virtual_machine(spec())
    vm["spec"]["template"]["spec"].update(pod_changes)
    return vm


def _volumes(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [*M.virtual_machine(spec())["spec"]["template"]["spec"]["volumes"], *extra]


def _with(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = obj
    for key in parents:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[int(key)]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return obj


UNLABELLED = "a lab namespace must carry"


def hostile_writes() -> dict[str, tuple[Request, str]]:
    """(request with the worker's token, fragment of the message that must refuse it)."""
    claimed = lab_ns()
    kube_system = plain_namespace("kube-system")
    in_kube_system = _with(M.virtual_machine(spec()), "metadata.namespace", "kube-system")
    foreign_lab = plain_namespace("lab-foreign")
    service = M.ssh_service("cp-1", SESSION.session_id)
    session_policy = M.session_policy("cp-1", SESSION.session_id, "labrador")
    sa_token = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                "metadata": {"name": "steal", "namespace": "lab-cp-1",
                             "annotations": {"kubernetes.io/service-account.name": "default"}}}
    foreign_secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                      "metadata": {"name": "registry-creds", "namespace": SOURCE_NS}}
    builder = B.builder_vm_manifest("builder", SOURCE_NS, builder_class())
    hostile_dvt = _with(builder, "spec.dataVolumeTemplates.0.spec.source",
                        {"pvc": {"namespace": "kube-system", "name": "etcd-backup"}})
    return {
        "vm in kube-system": (create(in_kube_system, kube_system), "writes are allowed only"),
        "vm with a hostDisk": (create(_vm(volumes=_volumes(
            {"name": "host", "hostDisk": {"path": "/etc", "type": "Disk"}})), claimed), "VM volumes"),
        "vm with a secret volume": (create(_vm(volumes=_volumes(
            {"name": "s", "secret": {"secretName": "labrador-ssh"}})), claimed), "VM volumes"),
        "vm with a service account volume": (create(_vm(volumes=_volumes(
            {"name": "sa", "serviceAccount": {"serviceAccountName": "default"}})), claimed), "VM volumes"),
        "vm with a configmap volume": (create(_vm(volumes=_volumes(
            {"name": "c", "configMap": {"name": "kube-root-ca.crt"}})), claimed), "VM volumes"),
        "vm with a foreign accessCredentials secret": (create(_vm(accessCredentials=[{"sshPublicKey": {
            "source": {"secret": {"secretName": "someone-elses-key"}}, "propagationMethod": {"noCloud": {}}}}]),
            claimed), "accessCredentials"),
        "vm with a user password credential": (create(_vm(accessCredentials=[{"userPassword": {
            "source": {"secret": {"secretName": "labrador-ssh-key"}}, "propagationMethod": {"qemuGuestAgent": {}}}}]),
            claimed), "accessCredentials"),
        "vm with cloud-init from a secret": (create(_vm(volumes=[
            _volumes()[0], {"name": "cloudinit", "cloudInitNoCloud": {"secretRef": {"name": "labrador-ssh-key"}}}]),
            claimed), "cloud-init"),
        "vm with a host device": (create(_with(_vm(), "spec.template.spec.domain.devices.hostDevices",
                                               [{"name": "nic", "deviceName": "intel.com/sriov"}]), claimed),
                                  "host devices"),
        "vm with a gpu": (create(_with(_vm(), "spec.template.spec.domain.devices.gpus",
                                       [{"name": "gpu", "deviceName": "nvidia.com/GA100"}]), claimed), "GPUs"),
        "vm on a multus network": (create(_vm(networks=[{"name": "default", "multus": {"networkName": "host-lan"}}]),
                                          claimed), "pod network"),
        "vm with a sidecar hook": (create(_with(_vm(), "spec.template.metadata.annotations",
                                                {"hooks.kubevirt.io/hookSidecars": '[{"image": "evil"}]'}), claimed),
                                   "sidecar hooks"),
        "lab vm whose pod escapes default-deny": (create(_with(_vm(), "spec.template.metadata.labels", {}), claimed),
                                                  "default-deny"),
        "lab vm with dataVolumeTemplates": (create(_with(_vm(), "spec.dataVolumeTemplates",
                                                         builder["spec"]["dataVolumeTemplates"]), claimed),
                                            "dataVolumeTemplates"),
        "builder vm cloning a kube-system pvc": (create(hostile_dvt, plain_namespace(SOURCE_NS)), "disks may only"),
        "datavolume cloning a kube-system pvc": (create(M.datavolume_clone(
            "cp-1", PvcCloneSource(pvc=PvcRef(namespace="kube-system", name="etcd"), size="1Gi")), claimed),
            "disks may only"),
        "namespace without the label": (create({"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": "lab-x", "labels": {}}}), UNLABELLED),
        "namespace not named lab-*": (create(_with(M.namespace(spec(), NOW), "metadata.name", "kube-evil")),
                                      "named lab-*"),
        "delete of labrador": (delete(plain_namespace("labrador", {"app.kubernetes.io/part-of": "labrador"})),
                               "named lab-*"),
        "delete of kube-system": (delete(kube_system), "named lab-*"),
        "delete of a foreign lab-* namespace": (delete(foreign_lab), UNLABELLED),
        "patch removing the label": (update(lab_ns(), {"metadata": {"labels": {L.MANAGED_BY: None}}}), UNLABELLED),
        "patch adopting a foreign lab-* namespace": (update(foreign_lab, {"metadata": {"labels": {
            L.MANAGED_BY: "labrador"}}}), UNLABELLED),
        "vm in a foreign lab-* namespace": (create(_with(_vm(), "metadata.namespace", "lab-foreign"), foreign_lab),
                                            "writes are allowed only"),
        "loadbalancer service": (create(_with(service, "spec.type", "LoadBalancer"), claimed), "Services"),
        "service to the api port": (create(_with(service, "spec.ports", [{"port": 6443, "targetPort": 6443}]),
                                           claimed), "Services"),
        "service with external IPs": (create(_with(service, "spec.externalIPs", ["10.96.0.1"]), claimed),
                                      "Services"),
        "service selecting any pod": (create(_with(service, "spec.selector", {"app": "kube-dns"}), claimed),
                                      "Services"),
        "service without a type": (create(_with(service, "spec", {"ports": service["spec"]["ports"]}), claimed),
                                   "Services"),
        "egress to the internet": (create(_with(session_policy, "spec.egress",
                                                [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]), claimed), "egress"),
        "egress to everyone": (create(_with(session_policy, "spec.egress", [{}]), claimed), "egress"),
        "network policy in kube-system": (create(_with(M.default_deny_policy("cp-1"), "metadata.namespace",
                                                       "kube-system"), kube_system), "writes are allowed only"),
        "service-account token secret": (create(sa_token, claimed), "Opaque"),
        "delete a foreign secret in a source namespace": (delete(foreign_secret, plain_namespace(SOURCE_NS)),
                                                           "writes are allowed only"),
        "another configmap in its own namespace": (create(_with(configmap_manifest("labrador"), "metadata.name",
                                                                "labrador-evil"), plain_namespace("labrador")),
                                                   "writes are allowed only"),
        "a pod": (create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "lab-cp-1"},
                          "spec": {"containers": [{"name": "c", "image": "busybox"}]}}, claimed), "not one labrador"),
        "a cluster role binding": (create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                                           "metadata": {"name": "x"}}), "not one labrador"),
    }


@pytest.mark.parametrize("name", sorted(hostile_writes()))
def test_hostile_write_is_refused_with_the_policys_message(name: str) -> None:
    request, fragment = hostile_writes()[name]
    decision = decide(policy(), request)
    assert decision.matched
    # refused by the rule's own false, not by an evaluation error (whose message would differ)
    assert message(fragment) in decision.refusals, decision.refusals
    assert not [refusal for refusal in decision.refusals if "[error:" in refusal]


def test_other_users_are_not_fenced() -> None:
    request, _ = hostile_writes()["vm in kube-system"]
    request.username = "system:serviceaccount:kube-system:replicaset-controller"
    assert decide(policy(), request) == Decision(matched=False)
    request.username = "kubernetes-admin"
    assert decide(policy(), request) == Decision(matched=False)


def test_a_worker_installed_elsewhere_is_fenced_in_its_own_namespace() -> None:
    published = configmap_manifest("labrador-staging", {})
    request = create(published, plain_namespace("labrador-staging"))
    request.username = "system:serviceaccount:labrador-staging:labrador-worker"
    assert decide(policy(), request).allowed
    request.username = "system:serviceaccount:labrador:labrador-worker"  # not its namespace
    assert not decide(policy(), request).allowed


def test_policy_and_binding_are_valid_and_deny() -> None:
    assert schemas.errors(policy()) == []
    assert schemas.errors(binding()) == []
    assert binding()["spec"]["policyName"] == policy()["metadata"]["name"]
    assert binding()["spec"]["validationActions"] == ["Deny"]
    assert policy()["spec"]["failurePolicy"] == "Fail"
    assert "paramKind" not in policy()["spec"] and "paramRef" not in binding()["spec"]


def _variable(name: str) -> str:
    (found,) = [v["expression"] for v in policy()["spec"]["variables"] if v["name"] == name]
    return found


def test_fixed_values_match_labrador() -> None:
    assert _variable("imageSourceNamespaces") == repr(Settings().image_source_namespaces)
    prefix = yaml.safe_load(_variable("labNamespacePrefix"))
    assert prefix == "'lab-'" or prefix.strip("'") == "lab-"
    assert node_namespace("n1").startswith("lab-") and node_namespace("N_1" * 30).startswith("lab-")
    assert _variable("managedBy") == repr(L.MANAGED_BY)
    account = yaml.safe_load((DEPLOY / "serviceaccount.yaml").read_text())["metadata"]["name"]
    assert f":{account}'" in policy()["spec"]["matchConditions"][0]["expression"]
    assert M.SSH_KEY_SECRET in message("accessCredentials")
    assert f"'{CONFIGMAP_NAME}'" in policy()["spec"]["validations"][3]["expression"]


def test_every_kind_the_worker_writes_is_allowed_by_the_policy() -> None:
    allowed = re.findall(r"'([a-z0-9.]*/[a-z]+)'", policy()["spec"]["validations"][0]["expression"])
    written = {f"{group}/{resource}" for group, resource, verb, _ in PERMISSIONS
               if verb in {"create", "update", "patch", "delete"} and "/" not in resource}
    assert written <= set(allowed)


def test_shipped_pvc_clone_classes_clone_from_an_image_source_namespace() -> None:
    from labs.loader import load_catalog

    catalog = load_catalog(Settings().catalog_dir)
    for node_class in catalog.node_classes.values():
        if isinstance(node_class.disk, PvcCloneSource):
            assert node_class.disk.pvc.namespace in Settings().image_source_namespaces, node_class.name


def test_every_rule_of_the_policy_refuses_some_hostile_write() -> None:
    """No rule is dead weight or untested: each validation's message refuses at least one write."""
    refused = {refusal for request, _ in hostile_writes().values()
               for refusal in decide(policy(), request).refusals}
    assert refused == {v["message"] for v in policy()["spec"]["validations"]}
