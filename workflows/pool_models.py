"""Inputs, outputs and activity contracts of the warm pool: refill, leak collection, capacity broker.

Pure pydantic models; the workflows, activities, CLI and schedule code all import them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from cluster.models import InventorySummary, NodeRecord
from labs.models import NodeClass
from workflows.capacity.models import (  # noqa: F401  (re-exported for their readers)
    CAPACITY_BROKER_WORKFLOW_PREFIX,
    CapacityActivityName,
    CapacityLimits,
    CapacityNotice,
    CapacityRelease,
    CapacityRequest,
    CapacityState,
    EndedSessions,
    EndedSessionsInput,
    PoolNodeHold,
    PoolReservation,
    PoolReservationResult,
    QueueEntry,
    SessionRunRef,
    capacity_broker_id,
)
from workflows.pool_policy import ClassDemand

POOL_REFILL_SCHEDULE_ID = "labrador-pool-refill"
POOL_REFILL_WORKFLOW_ID = "labrador-pool-refill"

POOL_STATUS_WORKFLOW_PREFIX = "labrador-pool-status"


class Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class PoolActivityName(StrEnum):
    """Activities of activities/pool_activities.py (called by name, like workflows.models.ActivityName)."""

    POOL_PLAN = "pool_plan"
    ENDED_SESSIONS = CapacityActivityName.ENDED_SESSIONS.value
    COLLECT_SESSION = "pool_collect_session"
    DELETE_UNCLAIMED_NODE = "pool_delete_unclaimed_node"
    POOL_VIEW = "pool_view"


# --- refill ---------------------------------------------------------------------------------------


class ClassSizing(Model):
    """Bounds of the demand-aware target of one node class (workflows.pool_policy).

    In `PoolRefillInput.sizing` an operator's override (`labrador pool size`): a bound left None
    comes from the catalog's `pool:` block (workflows/pool_sizing.py has the precedence).
    """

    min_size: int | None = Field(None, ge=0, description="a flat floor; replaces the catalog's min and schedule")
    max_size: int | None = Field(None, ge=0, description="replaces the catalog's max")
    margin: int = Field(0, ge=0)


class PoolRefillMemory(Model):
    """What one refill hands the next: the demand estimate and the pool nodes it left (bounded by the
    pool's size, not by the running labs). `claimed_node_ids`: refills before the pool view (read once)."""

    demand: dict[str, ClassDemand] = Field(default_factory=dict)
    claimed_node_ids: dict[str, list[str]] = Field(default_factory=dict)
    pool_node_ids: dict[str, list[str]] = Field(default_factory=dict)
    observed_at: datetime | None = None


class PoolRefillInput(Model):
    """The schedule's argument. `drained` lives here: every refill reads it (see docs/pool.md)."""

    sizing: dict[str, ClassSizing] = Field(
        default_factory=dict, description="per-class overrides (`labrador pool size`); win over the catalog"
    )
    default_sizing: ClassSizing = Field(
        default_factory=ClassSizing, description="bounds of a class with neither override nor catalog `pool:`"
    )
    pooled_classes: list[str] | None = Field(
        default=None, description="classes the pool keeps warm; None means every class of the catalog"
    )
    drained: list[str] = Field(default_factory=list, description="classes not refilled; their free nodes go")
    max_vms: int = Field(200, ge=0, description="global cap on lab VMs (settings.max_vms)")
    max_memory_bytes: int = Field(512 * 2**30, ge=0, description="global cap on lab VM memory")
    parallelism: int = Field(5, ge=1, description="nodes created/brought up at once")
    provisioning_overdue: timedelta = timedelta(minutes=15)
    refill_interval: timedelta = timedelta(minutes=1)
    default_boot_time: timedelta = timedelta(minutes=2)
    collect_leaks: bool = True
    previous: PoolRefillMemory | None = Field(
        default=None,
        description="demand memory for a run outside the schedule (`pool drain`); scheduled runs use the last result",
    )
    use_capacity_broker: bool = Field(
        True, description="reserve new pool nodes with the capacity broker so queued sessions go first"
    )


class PoolPlanInput(Model):
    classes: list[str] | None = None


class PoolPlan(Model):
    """The node classes to keep warm, `image` already set to the effective image."""

    node_classes: dict[str, NodeClass]


class ClassReport(Model):
    node_class: str
    target: int
    target_reason: str = Field("", description="why: drained, min, schedule '...', override min, demand, max (...)")
    min_size: int | None = Field(None, description="the floor this refill used")
    max_size: int | None = Field(None, description="the cap this refill used")
    free: int = Field(0, description="free nodes after the refill (fresh image)")
    provisioning: int = 0
    claimed: int = 0
    stale: int = Field(0, description="free nodes found on an old image (deleted)")
    drained: bool = False
    created: int = 0
    became_ready: int = 0
    failed: int = 0
    deleted_stale: int = 0
    deleted_overdue: int = 0
    deleted_surplus: int = 0
    deleted_drained: int = 0
    claimed_meanwhile: int = Field(
        0, description="nodes the refill meant to delete that a session claimed first (left to the session)"
    )
    capped: bool = Field(False, description="fewer nodes created than wanted because of the capacity cap")


class UnclaimedNodeDeletion(Model):
    """Answer of DELETE_UNCLAIMED_NODE: False when a session claimed the node first (it stays)."""

    node_id: str
    deleted: bool


class LeakReport(Model):
    sessions: int = 0
    nodes: int = 0
    services: int = 0
    networkpolicies: int = 0
    namespaces: int = 0
    session_ids: list[str] = Field(default_factory=list)


class PoolRefillResult(Model):
    started_at: datetime
    finished_at: datetime
    classes: dict[str, ClassReport] = Field(default_factory=dict)
    leaks: LeakReport = Field(default_factory=LeakReport)
    capped_reason: str | None = None
    # Carried to the next scheduled run (workflow.get_last_completion_result) for demand estimation.
    demand: dict[str, ClassDemand] = Field(default_factory=dict)
    claimed_node_ids: dict[str, list[str]] = Field(default_factory=dict, description="refills before the pool view")
    pool_node_ids: dict[str, list[str]] = Field(default_factory=dict, description="free nodes left, per class")
    observed_at: datetime | None = None


class PoolViewInput(Model):
    previous: PoolRefillMemory | None = None
    collect_leaks: bool = True
    leak_limit: int = Field(100, ge=0, description="ended sessions returned per run (the next run takes the rest)")


class EndedLeftover(Model):
    session_id: str
    kinds: list[str] = Field(default_factory=list)


class PoolView(Model):
    """What the refill needs of the cluster, bounded by the pool (not by the running labs): the
    unclaimed nodes, the counts of everything, claims since the last refill, ended sessions (a page)."""

    pool_nodes: list[NodeRecord] = Field(default_factory=list, description="free and provisioning nodes")
    summary: InventorySummary
    new_claims: dict[str, int] = Field(default_factory=dict)
    ended: list[EndedLeftover] = Field(default_factory=list)
    observed_at: datetime


# --- leak collection ------------------------------------------------------------------------------


class CollectSessionInput(Model):
    session_id: str


class CollectedSession(Model):
    session_id: str
    nodes: int


# --- capacity (the models live in workflows/capacity/models.py; re-exported for their readers) -----

# --- status (CLI) ---------------------------------------------------------------------------------


class PoolStatusInput(Model):
    refill: PoolRefillInput = Field(default_factory=PoolRefillInput)
    targets: dict[str, int] = Field(default_factory=dict, description="the last refill's targets")


class ClassStatus(Model):
    node_class: str
    image: str
    free: int = 0
    provisioning: int = 0
    claimed: int = 0
    target: int | None = None
    stale: int = 0
    drained: bool = False


class PoolStatus(Model):
    classes: dict[str, ClassStatus]
    total_vms: int
    total_memory_bytes: int
    max_vms: int
    max_memory_bytes: int
    exposed_ports_in_use: int = 0
    exposed_ports_capacity: int | None = None
    queue: list[QueueEntry] = Field(default_factory=list)
