"""Label keys, label sets and label-selector strings of the kubevirt backend. Pure functions.

Static labels (managed-by, node ID, node class, role, image hash) sit on the namespace, the VM and
the VM template; the template copies reach the virt-launcher pod, so pod selectors use them.
State and session change at claim time, so they live on the namespace (and, informatively, the VM
object), never on the template: a template label change reaches the pod only at the next VM start.
"""

from __future__ import annotations

from collections.abc import Mapping

from cluster.naming import short_hash

PREFIX = "labrador.io"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "labrador"
NODE_ID = f"{PREFIX}/node-id"
NODE_CLASS = f"{PREFIX}/node-class"
ROLE = f"{PREFIX}/role"
IMAGE_HASH = f"{PREFIX}/image-hash"
STATE = f"{PREFIX}/state"
SESSION = f"{PREFIX}/session"
COMPONENT = f"{PREFIX}/component"

# Annotations (values too long or too free-form for labels).
IMAGE = f"{PREFIX}/image"
WORKFLOW_ID = f"{PREFIX}/workflow-id"
RUN_ID = f"{PREFIX}/run-id"
MEMORY_BYTES = f"{PREFIX}/memory-bytes"
CREATED_AT = f"{PREFIX}/created-at"
KUBERNETES_VERSION = f"{PREFIX}/kubernetes-version"
DISK_SOURCE = f"{PREFIX}/disk-source"
CLONE_ATTEMPT = f"{PREFIX}/clone-attempt"
CLONE_PROGRESS = f"{PREFIX}/clone-progress"
CLONE_PROGRESS_AT = f"{PREFIX}/clone-progress-at"
CLONE_RETRY_AT = f"{PREFIX}/clone-retry-at"
CLONE_LAST_ERROR = f"{PREFIX}/clone-last-error"

# The worker's pods (deploy/worker/worker.yaml) carry this label; SSH ingress to lab VMs allows it only.
WORKER_POD_LABELS = {"app.kubernetes.io/name": "labrador-worker"}
KUBE_DNS_NAMESPACE = "kube-system"
KUBE_DNS_POD_LABELS = {"k8s-app": "kube-dns"}
NAMESPACE_NAME = "kubernetes.io/metadata.name"  # set by the API server on every namespace

# State label value of a node the pool is deleting: not a NodeState (no port caller ever sees such a
# node), a terminal mark that makes claims (which select state=free) pass it by.
STATE_DELETING = "deleting"

COMPONENT_SSH = "ssh"
COMPONENT_SESSION_NETWORK = "session-network"


def image_hash(image: str) -> str:
    return short_hash(image, 12)


def static_node_labels(node_id: str, node_class: str, role: str, image: str) -> dict[str, str]:
    """Labels that never change for the life of a node: safe on the VM template (and so the pod)."""
    return {
        MANAGED_BY: MANAGED_BY_VALUE,
        NODE_ID: node_id,
        NODE_CLASS: node_class,
        ROLE: role,
        IMAGE_HASH: image_hash(image),
    }


def vm_pod_selector(node_id: str) -> dict[str, str]:
    """matchLabels selecting exactly the virt-launcher pod of one node (template labels)."""
    return {MANAGED_BY: MANAGED_BY_VALUE, NODE_ID: node_id}


def any_vm_pod_selector() -> dict[str, str]:
    """matchLabels selecting the virt-launcher pod of any lab node (not CDI or other pods)."""
    return {MANAGED_BY: MANAGED_BY_VALUE}


def session_namespace_selector(session_id: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGED_BY_VALUE, SESSION: session_id}


def selector_string(match_labels: Mapping[str, str]) -> str:
    """A label-selector string for list calls, keys sorted so equal selectors are equal strings."""
    return ",".join(f"{key}={value}" for key, value in sorted(match_labels.items()))


def managed_selector() -> str:
    return selector_string({MANAGED_BY: MANAGED_BY_VALUE})


def free_nodes_selector(node_class: str) -> str:
    return selector_string({MANAGED_BY: MANAGED_BY_VALUE, NODE_CLASS: node_class, STATE: "free"})


def session_selector(session_id: str) -> str:
    return selector_string(session_namespace_selector(session_id))


def component_selector(component: str) -> str:
    return selector_string({MANAGED_BY: MANAGED_BY_VALUE, COMPONENT: component})


def parse_selector(selector: str) -> dict[str, str]:
    """Inverse of `selector_string` for equality-only selectors."""
    result: dict[str, str] = {}
    for term in filter(None, selector.split(",")):
        key, sep, value = term.partition("=")
        if not sep or not key or "!" in key:
            raise ValueError(f"label selector term {term!r} is not an equality 'key=value'")
        result[key] = value
    return result


def matches(labels: Mapping[str, str] | None, selector: str) -> bool:
    """Whether labels satisfy an equality selector. The backend re-checks list results with it:
    cheap, and an object that changed between list and use is skipped rather than trusted."""
    labels = labels or {}
    return all(labels.get(key) == value for key, value in parse_selector(selector).items())
