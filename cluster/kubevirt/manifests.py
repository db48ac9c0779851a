"""Kubernetes objects of the kubevirt backend, as pure functions: model in, dict out.

Nothing here does I/O; tests validate every function's output against the KubeVirt/CDI schemas
(strict copies) and kubernetes-validate. Names derive from node IDs and session IDs through
`cluster.naming`, so every create is create-or-get.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import yaml

from cluster.kubevirt import labels as L
from cluster.models import NodeSpec, NodeState, SessionRef
from cluster.naming import dns_label, node_namespace
from labs.models import PvcCloneSource, quantity_bytes

Manifest = dict[str, Any]

SSH_KEY_SECRET = "labrador-ssh-key"
DEFAULT_DENY_POLICY = "default-deny"
ROOT_DISK = "rootdisk"
CLOUD_INIT_DISK = "cloudinit"
POD_NETWORK = "default"
SSH_PORT = 22
DNS_PORT = 53
LabDns = Literal["cluster", "none"]


@dataclass(frozen=True)
class NodeNames:
    namespace: str
    vm: str
    datavolume: str


def node_names(node_id: str) -> NodeNames:
    return NodeNames(
        namespace=node_namespace(node_id),
        vm=node_id,
        datavolume=dns_label(node_id, ROOT_DISK),
    )


def session_policy_name(session_id: str) -> str:
    return dns_label("session", session_id)


def ssh_service_name(session_id: str) -> str:
    return dns_label("ssh", session_id)


def ssh_policy_name(session_id: str) -> str:
    return dns_label("ssh-ingress", session_id)


def _static(spec: NodeSpec) -> dict[str, str]:
    return L.static_node_labels(spec.node_id, spec.node_class, spec.role.value, spec.image)


def _state_labels(state: NodeState, session: SessionRef | None) -> dict[str, str]:
    result = {L.STATE: state.value}
    if session is not None:
        result[L.SESSION] = session.session_id
    return result


def initial_state(spec: NodeSpec) -> NodeState:
    return NodeState.CLAIMED if spec.session is not None else NodeState.PROVISIONING


def namespace(spec: NodeSpec, created_at: datetime) -> Manifest:
    """The node's namespace: the source of truth for its state, session and bookkeeping."""
    annotations = {
        L.IMAGE: spec.image,
        L.MEMORY_BYTES: str(quantity_bytes(spec.memory)),
        L.KUBERNETES_VERSION: spec.kubernetes_version,
        L.CREATED_AT: created_at.isoformat(),
        L.DISK_SOURCE: spec.disk.model_dump_json(),
    }
    if spec.session is not None:
        annotations |= {L.WORKFLOW_ID: spec.session.workflow_id, L.RUN_ID: spec.session.run_id}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": node_names(spec.node_id).namespace,
            "labels": _static(spec) | _state_labels(initial_state(spec), spec.session),
            "annotations": annotations,
        },
    }


def claim_patch(resource_version: str, session: SessionRef) -> Manifest:
    """Merge patch claiming a free node. The resourceVersion is a precondition: if anyone changed
    the namespace since we read it as free, the API server answers 409 and we try another node."""
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "labels": _state_labels(NodeState.CLAIMED, session),
            "annotations": {L.WORKFLOW_ID: session.workflow_id, L.RUN_ID: session.run_id},
        }
    }


def state_patch(state: NodeState, session: SessionRef | None = None) -> Manifest:
    """Merge patch of the informative state labels on the VM object (not its template)."""
    labels: dict[str, str | None] = {L.STATE: state.value, L.SESSION: session.session_id if session else None}
    return {"metadata": {"labels": labels}}


def free_patch(resource_version: str | None) -> Manifest:
    metadata: dict[str, Any] = {"labels": {L.STATE: NodeState.FREE.value}}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {"metadata": metadata}


def deleting_patch(resource_version: str) -> Manifest:
    """Merge patch marking an unclaimed node as being deleted. The resourceVersion precondition is
    what makes delete-if-unclaimed safe: a claim that patched the namespace since we read it makes
    this answer 409, and the node stays with its session."""
    return {"metadata": {"resourceVersion": resource_version, "labels": {L.STATE: L.STATE_DELETING}}}


def ssh_key_secret(node_id: str, public_key: str) -> Manifest:
    """The platform's public key, read by KubeVirt's accessCredentials (noCloud propagation)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": SSH_KEY_SECRET,
            "namespace": node_names(node_id).namespace,
            "labels": {L.MANAGED_BY: L.MANAGED_BY_VALUE, L.NODE_ID: node_id},
        },
        "type": "Opaque",
        "stringData": {"key1": public_key.strip()},
    }


def user_data(hostname: str) -> str:
    # disable_root: false because cloud-init's default turns root's authorized key into a
    # "please log in as <user>" stub, and setup/grading log in as root.
    config = {"hostname": hostname, "fqdn": hostname, "manage_etc_hosts": True, "disable_root": False,
              "ssh_pwauth": False}
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=True)


def _root_volume(spec: NodeSpec) -> Manifest:
    if isinstance(spec.disk, PvcCloneSource):
        return {"name": ROOT_DISK, "dataVolume": {"name": node_names(spec.node_id).datavolume}}
    # A pinned reference (digest or tag) with IfNotPresent lets the kubelet cache serve it.
    return {"name": ROOT_DISK, "containerDisk": {"image": spec.image, "imagePullPolicy": "IfNotPresent"}}


def virtual_machine(spec: NodeSpec) -> Manifest:
    names = node_names(spec.node_id)
    static = _static(spec)
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": names.vm,
            "namespace": names.namespace,
            "labels": static | _state_labels(initial_state(spec), spec.session),
            "annotations": {L.IMAGE: spec.image},
        },
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": {"labels": static, "annotations": {L.IMAGE: spec.image}},
                "spec": {
                    "hostname": names.vm,
                    "domain": {
                        "cpu": {"cores": spec.cpu_cores},
                        "memory": {"guest": spec.memory},
                        "devices": {
                            "disks": [
                                {"name": ROOT_DISK, "disk": {"bus": "virtio"}},
                                {"name": CLOUD_INIT_DISK, "disk": {"bus": "virtio"}},
                            ],
                            # Bridge: the guest owns the pod IP, so nested kubeadm nodes get distinct,
                            # routable addresses (masquerade would NAT every guest to 10.0.2.2).
                            "interfaces": [{"name": POD_NETWORK, "bridge": {}}],
                        },
                    },
                    "networks": [{"name": POD_NETWORK, "pod": {}}],
                    "volumes": [
                        _root_volume(spec),
                        {"name": CLOUD_INIT_DISK, "cloudInitNoCloud": {"userData": user_data(names.vm)}},
                    ],
                    "accessCredentials": [
                        {
                            "sshPublicKey": {
                                "source": {"secret": {"secretName": SSH_KEY_SECRET}},
                                "propagationMethod": {"noCloud": {}},
                            }
                        }
                    ],
                    # Ready must mean "SSH answers": setup scripts run right after readiness.
                    "readinessProbe": {
                        "tcpSocket": {"port": SSH_PORT},
                        "initialDelaySeconds": 5,
                        "periodSeconds": 5,
                        "failureThreshold": 3,
                    },
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    }


def datavolume_clone(node_id: str, source: PvcCloneSource) -> Manifest:
    """The CDI clone of the golden PVC that becomes this node's root disk."""
    names = node_names(node_id)
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {
            "name": names.datavolume,
            "namespace": names.namespace,
            "labels": {L.MANAGED_BY: L.MANAGED_BY_VALUE, L.NODE_ID: node_id},
        },
        "spec": {
            "source": {"pvc": {"namespace": source.pvc.namespace, "name": source.pvc.name}},
            "storage": {"resources": {"requests": {"storage": source.size}}},
        },
    }


def default_deny_policy(node_id: str) -> Manifest:
    """Isolates the VM's pod (only it: CDI's clone pods in the namespace stay unaffected)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": DEFAULT_DENY_POLICY,
            "namespace": node_names(node_id).namespace,
            "labels": {L.MANAGED_BY: L.MANAGED_BY_VALUE, L.NODE_ID: node_id},
        },
        "spec": {
            "podSelector": {"matchLabels": L.vm_pod_selector(node_id)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [],
        },
    }


def _session_peer(session_id: str) -> Manifest:
    # Both selectors in ONE peer: the API ANDs them (a lab VM pod in a namespace of this session).
    return {
        "namespaceSelector": {"matchLabels": L.session_namespace_selector(session_id)},
        "podSelector": {"matchLabels": L.any_vm_pod_selector()},
    }


def session_policy(node_id: str, session_id: str, orchestrator_namespace: str, *,
                   lab_dns: LabDns = "cluster") -> Manifest:
    """Allows this node <-> the other nodes of the session, DNS to kube-dns (unless `lab_dns` is
    "none": images are offline, and kube-dns resolves external names, a channel out), and SSH from
    the orchestrator. Peers are selected by the session label, so the policy is the same whatever
    the node list, and a node of another session never matches."""
    dns_peer = {
        "namespaceSelector": {"matchLabels": {L.NAMESPACE_NAME: L.KUBE_DNS_NAMESPACE}},
        "podSelector": {"matchLabels": dict(L.KUBE_DNS_POD_LABELS)},
    }
    orchestrator_peer = {
        "namespaceSelector": {"matchLabels": {L.NAMESPACE_NAME: orchestrator_namespace}},
        "podSelector": {"matchLabels": dict(L.WORKER_POD_LABELS)},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": session_policy_name(session_id),
            "namespace": node_names(node_id).namespace,
            "labels": {
                L.MANAGED_BY: L.MANAGED_BY_VALUE,
                L.NODE_ID: node_id,
                L.SESSION: session_id,
                L.COMPONENT: L.COMPONENT_SESSION_NETWORK,
            },
        },
        "spec": {
            "podSelector": {"matchLabels": L.vm_pod_selector(node_id)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [_session_peer(session_id)]},
                {"from": [orchestrator_peer], "ports": [{"protocol": "TCP", "port": SSH_PORT}]},
            ],
            "egress": [
                {"to": [_session_peer(session_id)]},
                *([{
                    "to": [dns_peer],
                    "ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}],
                }] if lab_dns == "cluster" else []),
            ],
        },
    }


def _ssh_labels(node_id: str, session_id: str) -> dict[str, str]:
    return {
        L.MANAGED_BY: L.MANAGED_BY_VALUE,
        L.NODE_ID: node_id,
        L.SESSION: session_id,
        L.COMPONENT: L.COMPONENT_SSH,
    }


def ssh_service(node_id: str, session_id: str, *, source_ranges: Sequence[str] = ()) -> Manifest:
    """The NodePort students SSH to. With `source_ranges`, `externalTrafficPolicy: Local` keeps the
    client's address (no SNAT to a node address) so the ingress policy can filter on it; then only
    the host node that runs the VM's pod answers on the nodePort."""
    local = {"externalTrafficPolicy": "Local"} if source_ranges else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": ssh_service_name(session_id),
            "namespace": node_names(node_id).namespace,
            "labels": _ssh_labels(node_id, session_id),
        },
        "spec": {
            "type": "NodePort",
            "selector": L.vm_pod_selector(node_id),
            "ports": [{"name": "ssh", "protocol": "TCP", "port": SSH_PORT, "targetPort": SSH_PORT}],
            **local,
        },
    }


def ssh_ingress_policy(node_id: str, session_id: str, *, source_ranges: Sequence[str] = ()) -> Manifest:
    """Lets students reach port 22 of the control plane through the NodePort. Without
    `source_ranges` there is no `from`: NodePort traffic with externalTrafficPolicy Cluster is
    source-NATed to a node address, so the source cannot be narrowed. With them (and the Service's
    externalTrafficPolicy Local) only those CIDRs. The rule names the target port (22), not the
    nodePort."""
    rule: Manifest = {"ports": [{"protocol": "TCP", "port": SSH_PORT}]}
    if source_ranges:
        rule = {"from": [{"ipBlock": {"cidr": cidr}} for cidr in source_ranges]} | rule
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": ssh_policy_name(session_id),
            "namespace": node_names(node_id).namespace,
            "labels": _ssh_labels(node_id, session_id),
        },
        "spec": {
            "podSelector": {"matchLabels": L.vm_pod_selector(node_id)},
            "policyTypes": ["Ingress"],
            "ingress": [rule],
        },
    }
