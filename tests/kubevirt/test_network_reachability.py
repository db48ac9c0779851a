"""The lab network, checked against a list: every NetworkPolicy labrador renders for a wired and
exposed 3-node session (plus a second session and a free warm node), evaluated as a CNI would
(tests/kubevirt/netpol.py), against the flows a lab node must and must not have."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cluster.kubevirt import labels as L
from cluster.kubevirt import manifests as M
from cluster.models import NodeSpec, SessionRef
from labs.models import ContainerDiskSource, Role
from tests.kubevirt.netpol import Cluster, Endpoint, allowed, selector_matches, via_node_port

NOW = datetime(2026, 1, 1, tzinfo=UTC)
IMAGE = "registry.example.test/labs/node@sha256:" + "c" * 64
A = SessionRef(session_id="s-alice-1a2b3c", workflow_id="lab-session/alice", run_id="r1")
B = SessionRef(session_id="s-bob-4d5e6f", workflow_id="lab-session/bob", run_id="r2")
WORKER_NS = "labrador"
SESSION_A = {"cp-1": Role.CONTROLPLANE, "w-1": Role.WORKER, "w-2": Role.WORKER}
SESSION_B = {"cp-9": Role.CONTROLPLANE, "w-9": Role.WORKER}
FREE = "free-1"
STUDENT = Endpoint("student", "203.0.113.5")
STRANGER = Endpoint("stranger", "198.51.100.7")
HOST_NODES = [Endpoint(f"host-node-{i}", f"192.168.1.{10 + i}") for i in range(3)]
API_SERVER = Endpoint("host API server", "192.168.1.10")  # host network, port 6443
METADATA = Endpoint("cloud metadata", "169.254.169.254")
INTERNET = [Endpoint("internet 8.8.8.8", "8.8.8.8"), Endpoint("internet 1.1.1.1", "1.1.1.1"),
            Endpoint("internet v6", "2606:4700::1111")]


def _spec(node_id: str, role: Role, session: SessionRef | None) -> NodeSpec:
    return NodeSpec(node_id=node_id, node_class="k8s", role=role, image=IMAGE, kubernetes_version="1.31.4",
                    cpu_cores=1, memory="1536Mi", session=session,
                    disk=ContainerDiskSource())


def _namespace_labels(manifest: dict[str, Any]) -> dict[str, str]:
    labels = dict(manifest["metadata"].get("labels") or {})
    labels[L.NAMESPACE_NAME] = manifest["metadata"]["name"]  # the API server sets it
    return labels


class World:
    """One host cluster: sessions A (wired, exposed) and B (wired, exposed), a free node, kube-dns,
    the worker, an API pod beside it, a CDI pod, an impostor kube-dns elsewhere."""

    def __init__(self, *, lab_dns: M.LabDns = "cluster", ssh_source_ranges: tuple[str, ...] = ()) -> None:
        self.namespaces: dict[str, dict[str, str]] = {
            name: {L.NAMESPACE_NAME: name} for name in ("kube-system", WORKER_NS, "default", "evil")}
        self.policies: list[dict[str, Any]] = []
        self.pods: dict[str, Endpoint] = {}
        self.services: dict[str, dict[str, Any]] = {}
        ip = iter(range(2, 250))
        for nodes, session in ((SESSION_A, A), (SESSION_B, B), ({FREE: Role.WORKER}, None)):
            for node_id, role in nodes.items():
                spec = _spec(node_id, role, session)
                ns = M.namespace(spec, NOW)
                self.namespaces[ns["metadata"]["name"]] = _namespace_labels(ns)
                template_labels = M.virtual_machine(spec)["spec"]["template"]["metadata"]["labels"]
                self.pods[node_id] = Endpoint(node_id, f"10.244.0.{next(ip)}", ns["metadata"]["name"], template_labels)
                self.policies.append(M.default_deny_policy(node_id))
                if session is not None:
                    self.policies.append(M.session_policy(node_id, session.session_id, WORKER_NS, lab_dns=lab_dns))
            if session is not None:
                cp = next(n for n, r in nodes.items() if r == Role.CONTROLPLANE)
                self.policies.append(M.ssh_ingress_policy(cp, session.session_id, source_ranges=ssh_source_ranges))
                self.services[session.session_id] = M.ssh_service(cp, session.session_id,
                                                                  source_ranges=ssh_source_ranges)
        self.pods["kube-dns"] = Endpoint("kube-dns", "10.244.9.10", "kube-system", {"k8s-app": "kube-dns"})
        self.pods["worker"] = Endpoint("worker", "10.244.9.20", WORKER_NS, dict(L.WORKER_POD_LABELS))
        self.pods["api"] = Endpoint("api", "10.244.9.21", WORKER_NS, {"app.kubernetes.io/name": "labrador-api"})
        self.pods["cdi-clone"] = Endpoint("cdi-clone", "10.244.9.30", "lab-cp-1",
                                          {"app": "containerized-data-importer"})
        self.pods["fake-dns"] = Endpoint("fake-dns", "10.244.9.40", "evil", {"k8s-app": "kube-dns"})
        self.cluster = Cluster(self.namespaces, self.policies)

    def can(self, source: str | Endpoint, destination: str | Endpoint, port: int, protocol: str = "TCP") -> bool:
        src = self.pods[source] if isinstance(source, str) else source
        dst = self.pods[destination] if isinstance(destination, str) else destination
        return allowed(self.cluster, src, dst, port, protocol)

    def ssh_from(self, client: Endpoint, session: SessionRef, node_index: int = 0) -> bool:
        """A client connecting to host node N's nodePort of the session's SSH Service."""
        service = self.services[session.session_id]
        node_id = service["spec"]["selector"][L.NODE_ID]
        target = next(p for p in self.pods.values() if p.labels.get(L.NODE_ID) == node_id)
        return allowed(self.cluster, via_node_port(client, HOST_NODES[node_index], service), target, 22)


LAB_A = list(SESSION_A)
LAB_B = list(SESSION_B)
# Ports a lab uses inside itself: SSH, API server, kubelet, etcd, VXLAN/Geneve overlays, NodePorts.
CLUSTER_PORTS = [(22, "TCP"), (6443, "TCP"), (10250, "TCP"), (2379, "TCP"), (8472, "UDP"), (6081, "UDP"),
                 (30080, "TCP")]
ANY_PORTS = [(22, "TCP"), (53, "UDP"), (80, "TCP"), (443, "TCP"), (6443, "TCP"), (10250, "TCP"), (8472, "UDP")]


def expected_flows() -> list[tuple[str, Any, Any, int, str, bool]]:
    """(what, source, destination, port, protocol, allowed) with the default settings."""
    flows: list[tuple[str, Any, Any, int, str, bool]] = []
    for src in LAB_A:
        for dst in LAB_A:
            if src != dst:
                flows += [(f"{src} -> {dst} (same session)", src, dst, p, proto, True) for p, proto in CLUSTER_PORTS]
        flows += [(f"{src} -> kube-dns:53/{proto}", src, "kube-dns", 53, proto, True) for proto in ("UDP", "TCP")]
        flows += [(f"{src} -> kube-dns:9153 (metrics)", src, "kube-dns", 9153, "TCP", False)]
        flows += [(f"{src} -> impostor kube-dns in another namespace", src, "fake-dns", 53, "UDP", False)]
        for dst in [*LAB_B, FREE]:
            flows += [(f"{src} -> {dst} (other session / free)", src, dst, p, proto, False) for p, proto in ANY_PORTS]
            flows += [(f"{dst} -> {src} (other session / free)", dst, src, p, proto, False) for p, proto in ANY_PORTS]
        flows += [(f"{src} -> worker", src, "worker", p, "TCP", False) for p in (22, 7233, 8088, 9090, 443)]
        flows += [(f"{src} -> API pod", src, "api", p, "TCP", False) for p in (8088, 443)]
        flows += [("worker -> " + src + ":22", "worker", src, 22, "TCP", True)]
        flows += [("worker -> " + src + f":{p}", "worker", src, p, "TCP", False) for p in (6443, 10250, 80)]
        # While exposed, port 22 of the control plane is open to every source (the NodePort's SNAT
        # hides the client): other labs are kept out by their own egress, host pods are not.
        exposed = src == "cp-1"
        flows += [("API pod -> " + src + ":22", "api", src, 22, "TCP", exposed)]
        flows += [(f"{src} -> host API server:6443", src, API_SERVER, 6443, "TCP", False)]
        flows += [(f"{src} -> 169.254.169.254:{p}", src, METADATA, p, "TCP", False) for p in (80, 443)]
        for node in HOST_NODES:
            flows += [(f"{src} -> {node.name}:{p}", src, node, p, proto, False)
                      for p, proto in [(22, "TCP"), (10250, "TCP"), (30000, "TCP"), (32767, "TCP"), (53, "UDP")]]
        for outside in INTERNET:
            flows += [(f"{src} -> {outside.name}:{p}", src, outside, p, proto, False)
                      for p, proto in [(53, "UDP"), (53, "TCP"), (80, "TCP"), (443, "TCP")]]
        flows += [(f"{src} -> CDI pod in its namespace", src, "cdi-clone", 8443, "TCP", False)]
        flows += [(f"internet -> {src} pod IP:{p}", INTERNET[0], src, p, "TCP", p == 22 and exposed)
                  for p in (22, 6443)]
        flows += [(f"host node -> {src}:6443 (not via the NodePort)", HOST_NODES[1], src, 6443, "TCP", False)]
    flows += [("free node -> kube-dns", FREE, "kube-dns", 53, "UDP", False),
              ("worker -> free node:22 (not wired)", "worker", FREE, 22, "TCP", False)]
    return flows


FLOWS = expected_flows()
DEFAULT = World()


@pytest.mark.parametrize("flow", range(len(FLOWS)), ids=[f[0] + f" {f[3]}/{f[4]}" for f in FLOWS])
def test_lab_network_flow(flow: int) -> None:
    what, src, dst, port, protocol, expected = FLOWS[flow]
    assert DEFAULT.can(src, dst, port, protocol) is expected, what


def test_students_reach_the_control_plane_through_the_nodeport_only() -> None:
    world = World()
    for index in range(len(HOST_NODES)):  # any node answers with externalTrafficPolicy Cluster
        assert world.ssh_from(STUDENT, A, index) and world.ssh_from(STRANGER, A, index)
    # Through the NodePort, port 22 of the control plane only: the workers have no Service.
    assert all(svc["spec"]["selector"][L.NODE_ID] in {"cp-1", "cp-9"} for svc in world.services.values())
    # A lab of another session cannot use the NodePort: its egress to node IPs is denied.
    assert not world.can("cp-9", HOST_NODES[0], 31022)


def test_lab_dns_none_removes_every_dns_path() -> None:
    world = World(lab_dns="none")
    for src in LAB_A:
        assert not world.can(src, "kube-dns", 53, "UDP") and not world.can(src, "kube-dns", 53, "TCP")
        for outside in INTERNET:
            assert not world.can(src, outside, 53, "UDP")
        # everything else unchanged
        assert world.can(src, next(n for n in LAB_A if n != src), 6443)
        assert world.can("worker", src, 22)


def test_ssh_source_ranges_narrow_who_reaches_port_22() -> None:
    world = World(ssh_source_ranges=("203.0.113.0/24",))
    assert all(s["spec"]["externalTrafficPolicy"] == "Local" for s in world.services.values())
    assert world.ssh_from(STUDENT, A)
    assert not world.ssh_from(STRANGER, A)
    assert world.can("worker", "cp-1", 22)  # setup and grading do not go through the NodePort
    assert not world.can(STRANGER, "cp-1", 22)
    assert not world.can("api", "cp-1", 22) and not world.can("cdi-clone", "cp-1", 22)  # host pods too
    assert World().can("api", "cp-1", 22)  # without ranges: any pod of the host cluster
    # Without ranges, NodePort traffic arrives SNATed to a node address: narrowing would refuse all.
    plain = World()
    assert "externalTrafficPolicy" not in plain.services[A.session_id]["spec"]


def test_the_model_is_the_cni_semantics() -> None:
    """The evaluator's own traps (the reason the list above can be trusted)."""
    assert selector_matches({}, {"a": "b"}) and selector_matches(None, {})
    assert not selector_matches({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {})
    assert selector_matches({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}, {})
    world = World()
    # A peer with namespaceSelector and podSelector in two separate peers would be OR: our policy ANDs.
    session = next(p for p in world.policies if p["metadata"]["name"] == M.session_policy_name(A.session_id))
    assert all(len(rule["from"]) == 1 for rule in session["spec"]["ingress"])
    split = {"from": [{"namespaceSelector": {"matchLabels": {L.SESSION: A.session_id}}},
                      {"podSelector": {"matchLabels": {L.MANAGED_BY: "labrador"}}}]}
    leaky = Cluster(world.namespaces, [*world.policies, {"apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy", "metadata": {"name": "leak", "namespace": "lab-cp-1"},
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [split]}}])
    assert allowed(leaky, world.pods["cdi-clone"], world.pods["cp-1"], 6443)  # OR lets CDI's pod in
    assert not world.can("cdi-clone", "cp-1", 6443)
    # An egress rule with an empty peer list would mean everyone: labrador renders none.
    assert all(rule.get("to") for p in world.policies for rule in p["spec"].get("egress", []))
