"""Models that cross the cluster port. Pure: workflows import these."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from labs.models import DiskSource, Role


class Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class NodeState(StrEnum):
    PROVISIONING = "provisioning"
    FREE = "free"
    CLAIMED = "claimed"


class SessionRef(Model):
    """Who holds a node: the session ID used in names/labels plus the exact Temporal run."""

    session_id: str
    workflow_id: str
    run_id: str


class NodeSpec(Model):
    """What `provision` creates. `session` set means a cold provision: created already claimed."""

    node_id: str = Field(description="stable DNS-label ID; every Kubernetes name derives from it")
    node_class: str
    role: Role
    image: str = Field(description="full containerDisk reference, pinned")
    kubernetes_version: str
    cpu_cores: int
    memory: str
    disk: DiskSource
    session: SessionRef | None = None


class NodeRecord(Model):
    node_id: str
    node_class: str
    role: Role
    image: str
    state: NodeState
    session: SessionRef | None = None
    memory_bytes: int = 0
    created_at: datetime


class NodePhase(StrEnum):
    PROVISIONING = "provisioning"
    READY = "ready"
    NOT_READY = "not-ready"  # was ready, stopped being ready (health)
    FAILED = "failed"  # permanent: image pull error, unschedulable, VMI Failed
    MISSING = "missing"
    PAUSED = "paused"  # paused in place (pause_node): memory and disk kept, no CPU, SSH does not answer


class NodeStatus(Model):
    node_id: str
    phase: NodePhase
    address: str | None = Field(default=None, description="the guest's IP on the pod network")
    reason: str | None = None


class ClaimWant(Model):
    node_class: str
    count: int = Field(ge=1)


class ClaimRequest(Model):
    session: SessionRef
    wants: list[ClaimWant]


class ClaimResult(Model):
    nodes: list[NodeRecord] = Field(description="claimed nodes; may be fewer than wanted")


class SessionWiring(Model):
    session: SessionRef
    controlplane: str = Field(description="node ID of the control plane")
    workers: list[str] = Field(default_factory=list, description="node IDs of the workers")


class SshTarget(Model):
    """Where the orchestrator reaches a node as root (setup, grading)."""

    node_id: str
    host: str
    port: int
    username: str = "root"


class SshEndpoint(Model):
    """What the student gets: the exposed SSH service of the control plane."""

    host: str
    port: int
    username: str = "root"


class SessionLeftovers(Model):
    """Objects labelled with a session, for the leak collector."""

    session_id: str
    workflow_id: str | None = None
    run_id: str | None = None
    kinds: list[Literal["node", "service", "networkpolicy", "namespace"]] = Field(default_factory=list)


class Inventory(Model):
    nodes: list[NodeRecord]
    sessions: list[SessionLeftovers] = Field(default_factory=list)
    exposed_ports_in_use: int = 0
    exposed_ports_capacity: int | None = None


class NodeGroup(Model):
    """Nodes of one class, image and state: how many and how much memory."""

    node_class: str
    image: str
    state: NodeState
    count: int = Field(ge=0)
    memory_bytes: int = Field(0, ge=0)


class InventorySummary(Model):
    """The inventory as counts: what crosses Temporal instead of the node list (which grows with the
    cluster). Bounded by classes x images x states, whatever the number of nodes or labs."""

    groups: list[NodeGroup] = Field(default_factory=list)
    exposed_ports_in_use: int = 0
    exposed_ports_capacity: int | None = None

    @property
    def vms(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def memory_bytes(self) -> int:
        return sum(g.memory_bytes for g in self.groups)

    def count(self, node_class: str | None = None, state: NodeState | None = None, image: str | None = None) -> int:
        return sum(
            g.count for g in self.groups
            if (node_class is None or g.node_class == node_class) and (state is None or g.state == state)
            and (image is None or g.image == image)
        )


class UsageCounts(Model):
    """The cluster's VMs and their memory, and what of it the named sessions' and nodes' are
    (`CountsUsage.usage_counts`): what the capacity broker's reading needs, without the node list."""

    vms: int = 0
    memory_bytes: int = 0
    sessions: dict[str, tuple[int, int]] = Field(
        default_factory=dict, description="session ID -> (its VMs, their memory bytes), for the sessions asked about"
    )
    nodes: list[str] = Field(default_factory=list, description="the nodes asked about that exist, sorted")


def count_usage(inventory: Inventory, sessions: Collection[str], nodes: Collection[str]) -> UsageCounts:
    """UsageCounts from a whole inventory (for a backend without `usage_counts`)."""
    wanted_sessions, wanted_nodes = set(sessions), set(nodes)
    per_session: dict[str, tuple[int, int]] = {}
    present: list[str] = []
    for node in inventory.nodes:
        if node.session is not None and node.session.session_id in wanted_sessions:
            vms, memory = per_session.get(node.session.session_id, (0, 0))
            per_session[node.session.session_id] = (vms + 1, memory + node.memory_bytes)
        if node.node_id in wanted_nodes:
            present.append(node.node_id)
    return UsageCounts(
        vms=len(inventory.nodes), memory_bytes=sum(n.memory_bytes for n in inventory.nodes),
        sessions=per_session, nodes=sorted(present),
    )


def summarize(inventory: Inventory) -> InventorySummary:
    """Counts and memory per (class, image, state), ports in use/capacity. Pure: both backends'
    `inventory_summary` is `summarize(await self.inventory())`."""
    groups: dict[tuple[str, str, NodeState], list[int]] = {}
    for node in inventory.nodes:
        entry = groups.setdefault((node.node_class, node.image, node.state), [0, 0])
        entry[0] += 1
        entry[1] += node.memory_bytes
    return InventorySummary(
        groups=[
            NodeGroup(node_class=c, image=i, state=s, count=n, memory_bytes=m)
            for (c, i, s), (n, m) in sorted(groups.items())
        ],
        exposed_ports_in_use=inventory.exposed_ports_in_use,
        exposed_ports_capacity=inventory.exposed_ports_capacity,
    )
