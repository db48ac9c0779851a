"""The cluster port: what the lab workflows need from a cluster, nothing more.

Every method is idempotent and keyed by names the workflow derives deterministically (node IDs,
session IDs). Errors:
- `ClusterUnavailable` (retryable): API unreachable, 5xx, 429, timeouts, conflicts that a retry solves.
- `PermanentClusterError` (not retryable): bad input, forbidden, a node that can never become ready
  (image pull error, unschedulable, VMI failed); the message names the object and the cause.
Activities map the first to a plain exception (Temporal retries it) and the second to a
non-retryable ApplicationError.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol, runtime_checkable

from cluster.models import (
    ClaimRequest,
    ClaimResult,
    Inventory,
    InventorySummary,
    NodeRecord,
    NodeSpec,
    NodeStatus,
    SessionWiring,
    SshEndpoint,
    SshTarget,
    UsageCounts,
)


class ClusterError(Exception):
    """Base of the port's errors."""


class ClusterUnavailable(ClusterError):
    """Transient: retry with backoff."""


class PermanentClusterError(ClusterError):
    """Retrying cannot help; the message says which object and why."""


class NodeNotFound(PermanentClusterError):
    """The node ID does not exist (for calls where absence is an error)."""


@runtime_checkable
class ClusterPort(Protocol):
    # --- node level -------------------------------------------------------------------------
    async def provision(self, spec: NodeSpec) -> NodeRecord:
        """Create the node if absent (create-or-get). State: provisioning, or claimed when
        `spec.session` is set. Returns the existing record when the node already exists."""
        ...

    async def node_status(self, node_id: str) -> NodeStatus:
        """One observation of readiness/health; never blocks. MISSING for an unknown node."""
        ...

    async def mark_free(self, node_id: str) -> NodeRecord:
        """provisioning -> free (the pool calls it once the node is ready). Idempotent."""
        ...

    async def ssh_target(self, node_id: str) -> SshTarget:
        """How the orchestrator reaches the node as root. NodeNotFound if absent."""
        ...

    async def delete_node(self, node_id: str) -> None:
        """Delete the node and everything in its namespace. Absent is success."""
        ...

    async def delete_node_if_unclaimed(self, node_id: str) -> bool:
        """Delete the node only while nobody holds it (state provisioning or free), atomically with
        respect to `claim`: a node is either claimed or deleted, never both. True when it was deleted
        (or was already absent); False when it is claimed (nothing is deleted then). The pool uses
        this for the nodes it drops; a session's own nodes go with `delete_node`/`release`."""
        ...

    async def pause_node(self, node_id: str) -> None:
        """Freeze the node in place: memory and disk state are kept, it uses no CPU, its SSH stops
        answering, and `node_status` reports PAUSED. Pausing a paused node is success.
        NodeNotFound if absent; PermanentClusterError if it is not running (cannot be paused)."""
        ...

    async def unpause_node(self, node_id: str) -> None:
        """Let a paused node run again (SSH answers again; its guest clock lags by the paused time,
        which the session steps). Unpausing a node that is not paused is success. NodeNotFound if absent."""
        ...

    # --- session level ----------------------------------------------------------------------
    async def claim(self, request: ClaimRequest) -> ClaimResult:
        """Claim free nodes for a session, exclusively (never one node for two sessions). Returns
        what it could get (maybe fewer than wanted). Idempotent: nodes already claimed by this
        session are returned again and count towards the wants."""
        ...

    async def wire(self, wiring: SessionWiring) -> None:
        """Allow control plane <-> workers of this session only, DNS, and SSH from the orchestrator."""
        ...

    async def unwire(self, session_id: str) -> None:
        ...

    async def expose(self, session_id: str, node_id: str) -> SshEndpoint:
        """Expose SSH of the node (the control plane) to the student. Create-or-get."""
        ...

    async def unexpose(self, session_id: str) -> None:
        ...

    async def release(self, session_id: str) -> int:
        """Delete every node and object of the session; returns how many nodes were deleted."""
        ...

    # --- pool -------------------------------------------------------------------------------
    async def inventory(self) -> Inventory:
        """Every node and session leftover. Stays inside activities: it grows with the cluster."""
        ...

    async def inventory_summary(self) -> InventorySummary:
        """`cluster.models.summarize(await self.inventory())`: what workflows get. Must include every
        node whose `provision` returned before this call began (the capacity ledger relies on it)."""
        ...


@runtime_checkable
class CountsUsage(Protocol):
    """Optional: a backend that counts the cluster's VMs and memory without building the inventory
    (the capacity broker reads them every second while grants are in flight; an inventory of 15,000
    nodes took ~0.5 s of the worker's CPU on the simulated cluster). Same rule as `inventory_summary`:
    every node whose `provision` returned before the call began is counted."""

    async def usage_counts(self, sessions: Collection[str], nodes: Collection[str]) -> UsageCounts:
        """All VMs and their memory; per session asked about, its VMs and memory; which of the
        nodes asked about exist."""
        ...


@runtime_checkable
class WatchesNodes(Protocol):
    """Optional: a backend that observes the cluster (a watch) rather than asking it each time."""

    async def wait_node_change(self, node_id: str, poll_interval: float) -> None:
        """Return when something about the node may have changed (at the latest after a re-check
        period of the backend's choosing), so a wait looks again then instead of every
        `poll_interval`. A backend that cannot tell sleeps `poll_interval`."""
        ...
