"""NetworkPolicies evaluated as a CNI enforces them (networking.k8s.io/v1 semantics), purely.

`allowed(cluster, source, destination, port, protocol)` answers whether one connection is let
through: the source's egress policies AND the destination's ingress policies must both allow it.

- A pod is isolated for egress (ingress) when some policy in its namespace selects it with
  `Egress` (`Ingress`) in its policyTypes (default: Ingress, plus Egress when `egress` is given);
  an isolated pod's traffic passes only if some rule of those policies matches. Policies add up.
- A rule with no `to`/`from` matches every peer, no `ports` every port. A peer with
  `namespaceSelector` AND `podSelector` matches pods that satisfy both; `podSelector` alone means
  the policy's own namespace; `ipBlock` matches by address (cidr minus except), applied to any
  endpoint's IP, pods included (the strict reading: some CNIs never match pod IPs with ipBlock).
- Endpoints that are not pods (node IPs, the API server on the host network, the metadata
  service, the internet) have no policies of their own: what they send and receive is decided by
  the pod at the other end only.
- Traffic through a Service or a NodePort is evaluated after DNAT (the pod and its target port),
  with the source kube-proxy leaves: the client's address with `externalTrafficPolicy: Local`, a
  node address with `Cluster`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    name: str
    ip: str
    namespace: str | None = None  # None: not a pod (node, host network, outside the cluster)
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


@dataclass
class Cluster:
    namespaces: dict[str, dict[str, str]]  # name -> labels (kubernetes.io/metadata.name included)
    policies: list[Obj]

    def policies_in(self, namespace: str) -> list[Obj]:
        return [p for p in self.policies if p["metadata"]["namespace"] == namespace]


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: matchLabels AND every matchExpression; {} matches everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _policy_types(policy: Obj) -> set[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return set(spec["policyTypes"])
    return {"Ingress"} | ({"Egress"} if "egress" in spec else set())


def _selects(policy: Obj, pod: Endpoint) -> bool:
    return policy["metadata"]["namespace"] == pod.namespace and selector_matches(
        policy["spec"].get("podSelector"), pod.labels)


def _in_block(ip: str, block: Obj) -> bool:
    address = ipaddress.ip_address(ip)
    network = ipaddress.ip_network(block["cidr"])
    if address.version != network.version or address not in network:
        return False
    return not any(address in ipaddress.ip_network(e) for e in block.get("except") or []
                   if ipaddress.ip_network(e).version == address.version)


def _peer_matches(cluster: Cluster, policy_namespace: str, peer: Obj, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        return _in_block(other.ip, peer["ipBlock"])
    if not other.is_pod:
        return False  # selectors only ever match pods
    assert other.namespace is not None
    if "namespaceSelector" in peer:
        namespace_ok = selector_matches(peer["namespaceSelector"], cluster.namespaces[other.namespace])
    else:
        namespace_ok = other.namespace == policy_namespace
    return namespace_ok and selector_matches(peer.get("podSelector"), other.labels)


def _port_matches(rule_ports: Iterable[Obj] | None, port: int, protocol: str) -> bool:
    ports = list(rule_ports or [])
    if not ports:
        return True
    for item in ports:
        if item.get("protocol", "TCP") != protocol:
            continue
        if "port" not in item:
            return True
        first = item["port"]
        if not isinstance(first, int):
            raise ValueError(f"named port {first!r}: not modelled (labrador names none)")
        if first <= port <= item.get("endPort", first):
            return True
    return False


def _direction_allows(cluster: Cluster, pod: Endpoint, other: Endpoint, port: int, protocol: str,
                      direction: str) -> bool:
    kind, rules_key, peers_key = ("Egress", "egress", "to") if direction == "egress" else ("Ingress", "ingress", "from")
    isolating = [p for p in cluster.policies_in(pod.namespace or "") if _selects(p, pod) and kind in _policy_types(p)]
    if not isolating:
        return True
    for policy in isolating:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(
                _peer_matches(cluster, policy["metadata"]["namespace"], peer, other) for peer in peers)
            if peer_ok and _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(cluster: Cluster, source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
    egress = not source.is_pod or _direction_allows(cluster, source, destination, port, protocol, "egress")
    ingress = not destination.is_pod or _direction_allows(cluster, destination, source, port, protocol, "ingress")
    return egress and ingress


def via_node_port(client: Endpoint, node: Endpoint, service: Obj) -> Endpoint:
    """The source the destination pod sees for a NodePort connection: the client itself with
    externalTrafficPolicy Local, else the node's address (kube-proxy's SNAT)."""
    if service["spec"].get("externalTrafficPolicy") == "Local":
        return client
    return Endpoint(f"{node.name} (SNAT of {client.name})", node.ip)
