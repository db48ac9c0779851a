"""What crosses Temporal for the capacity cap: requests, notices, reservations, the broker's state.

Every model here is bounded by what waits or is in flight, never by the number of running labs or
nodes: the cluster reaches the broker as counts (CapacityUsage), leases are not kept per running lab.
"""

from __future__ import annotations

import base64
import json
import zlib
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from cluster.models import SessionRef

CAPACITY_BROKER_WORKFLOW = "CapacityBroker"
CAPACITY_BROKER_WORKFLOW_PREFIX = "labrador-capacity"
CAPACITY_NOTICE_SIGNAL = "capacity_notice"


def capacity_broker_id(task_queue: str) -> str:
    """One broker per deployment (task queue): the workers of that queue run it. (The broker before
    ticket numbers ran as `labrador-capacity-broker/<task queue>`: see docs/pool.md, upgrading.)"""
    return f"{CAPACITY_BROKER_WORKFLOW_PREFIX}/{task_queue}"


class Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class CapacityActivityName(StrEnum):
    """Activities of the capacity path (activities/pool_activities.py), called by name."""

    ADMIT_CAPACITY = "pool_admit_capacity"
    REQUEST_CAPACITY = "pool_request_capacity"
    RELEASE_CAPACITY = "pool_release_capacity"
    RESERVE_POOL_CAPACITY = "pool_reserve_capacity"
    CAPACITY_USAGE = "pool_capacity_usage"
    ENDED_SESSIONS = "pool_ended_sessions"


# --- liveness of runs (the broker's and the leak collector's) ---------------------------------------


class SessionRunRef(Model):
    session_id: str
    workflow_id: str | None = None
    run_id: str | None = None


class EndedSessionsInput(Model):
    sessions: list[SessionRunRef]


class EndedSessions(Model):
    session_ids: list[str] = Field(default_factory=list, description="sessions whose run is not running")


class CapacityLimits(Model):
    max_vms: int
    max_memory_bytes: int


class CapacityRequest(Model):
    """A session asking for room for `vms` nodes (all its nodes, warm ones included). `new_vms` /
    `new_memory_bytes`: what it will create (its cold nodes); None (sessions before ticket numbers)
    counts all its nodes as new."""

    session: SessionRef
    vms: int = Field(ge=0)
    memory_bytes: int = Field(ge=0)
    limits: CapacityLimits
    requested_at: datetime
    new_vms: int | None = Field(default=None, ge=0)
    new_memory_bytes: int | None = Field(default=None, ge=0)


class CapacityRelease(Model):
    session: SessionRef
    reason: str = "released"


class CapacityNotice(Model):
    """Broker -> session: a grant, a queue place, or a refusal. As the `admit` update's answer, and as
    signal `capacity_notice` to the session's exact run (a later grant, or the head of the queue).
    `ticket`: the session's place in the FIFO order; `served`: how many tickets left the queue at its
    head so far (grants and refusals); the position is computed from both when read."""

    granted: bool = False
    position: int | None = None
    refused: str | None = None
    ticket: int | None = None
    served: int | None = None


class PoolNodeHold(Model):
    node_id: str
    memory_bytes: int


class PoolReservation(Model):
    """The refill asking room for new pool nodes; queued sessions go first. `holder`: the refill run
    (its reservation stays until its nodes exist or it releases it or it is not running any more)."""

    nodes: list[PoolNodeHold]
    limits: CapacityLimits
    holder: SessionRef | None = None


class PoolReservationResult(Model):
    granted: list[str] = Field(default_factory=list, description="node IDs the refill may create")
    reason: str | None = None


class CapacityUsageInput(Model):
    """What the broker asks the cluster: totals, plus what exists of its in-flight promises."""

    sessions: list[str] = Field(default_factory=list, description="session IDs with an unreflected grant")
    nodes: list[str] = Field(default_factory=list, description="pool node IDs reserved, not seen yet")


class SessionPresence(Model):
    vms: int = 0
    memory_bytes: int = 0


class CapacityUsage(Model):
    vms: int
    memory_bytes: int
    sessions: dict[str, SessionPresence] = Field(default_factory=dict)
    nodes: list[str] = Field(default_factory=list, description="of the asked node IDs, those that exist")


class QueueEntry(Model):
    position: int
    session_id: str
    workflow_id: str
    vms: int
    memory_bytes: int
    waiting_since: datetime
    ticket: int = 0


class CapacityStateRequest(Model):
    limit: int = Field(50, ge=0, le=1000, description="queue entries listed (the head); the count is total")


class CapacityState(Model):
    limits: CapacityLimits
    queue: list[QueueEntry] = Field(default_factory=list, description="the head of the queue")
    queue_length: int = 0
    served: int = 0
    cluster_vms: int = 0
    cluster_memory_bytes: int = 0
    promised_vms: int = 0
    promised_memory_bytes: int = 0
    pool_holds: int = 0
    summary_at: datetime | None = None
    # Kept for readers of the broker before ticket numbers (the same meaning as promised_*).
    leased_vms: int = 0
    leased_memory_bytes: int = 0
    sessions_holding: int = 0


class PositionRequest(Model):
    workflow_id: str
    run_id: str | None = Field(None, description="None: the latest run the broker knows of this workflow")


# --- the broker's whole state (continue-as-new carries it as one model) -----------------------------


class Waiting(Model):
    """One queue entry; kept compact (see PackedQueue)."""

    ticket: int
    workflow_id: str
    run_id: str
    session_id: str
    vms: int
    memory_bytes: int
    new_vms: int
    new_memory_bytes: int
    since: datetime
    notify: bool = Field(False, description="asked by signal (sessions before ticket numbers): tell positions")


class Promise(Model):
    """Room granted whose nodes may not exist yet (a session's cold nodes, a refill's new nodes).
    Counted until the cluster shows them, or, once released or its holder ended, until the next
    cluster reading (the nodes it made before are in that reading)."""

    key: str
    session_id: str | None = None
    workflow_id: str
    run_id: str
    vms: int
    memory_bytes: int
    pending_vms: int
    pending_memory_bytes: int
    nodes: list[str] = Field(default_factory=list, description="pool reservations: node IDs not seen yet")
    settling: bool = False
    expires_at: datetime | None = Field(None, description="only reservations without a holder (old refills)")


def pack(entries: list[Waiting]) -> str:
    """The queue as compressed JSON rows: 2,000 waiting sessions in ~100 KiB instead of ~400."""
    rows = [
        [w.ticket, w.workflow_id, w.run_id, w.session_id, w.vms, w.memory_bytes, w.new_vms, w.new_memory_bytes,
         w.since.isoformat(), int(w.notify)]
        for w in entries
    ]
    raw = json.dumps(rows, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(raw, 9)).decode()


def unpack(packed: str) -> list[Waiting]:
    if not packed:
        return []
    rows = json.loads(zlib.decompress(base64.b64decode(packed)))
    return [
        Waiting(ticket=r[0], workflow_id=r[1], run_id=r[2], session_id=r[3], vms=r[4], memory_bytes=r[5],
                new_vms=r[6], new_memory_bytes=r[7], since=datetime.fromisoformat(r[8]), notify=bool(r[9]))
        for r in rows
    ]


class BrokerSettings(Model):
    recheck: timedelta = Field(timedelta(seconds=30), description="cluster re-read while the queue is blocked")
    reflect_every: timedelta = Field(
        timedelta(seconds=1), description="cluster re-read while grants are in flight (to count them as nodes)"
    )
    liveness_every: timedelta = Field(timedelta(seconds=30), description="check that holders/waiters still run")
    liveness_batch: int = Field(100, ge=1, description="runs checked per liveness round (a rotating window)")
    continue_as_new_after: int = Field(
        10_000, ge=10, description="history events before continue-as-new (also when Temporal suggests it)"
    )
    pool_hold_ttl: timedelta = Field(timedelta(minutes=15), description="only reservations without a holder")


class BrokerState(Model):
    """Everything the broker knows; the input of every run (continue-as-new carries it whole)."""

    limits: CapacityLimits = CapacityLimits(max_vms=0, max_memory_bytes=0)
    settings: BrokerSettings = Field(default_factory=BrokerSettings)
    next_ticket: int = 1
    served: int = 0
    queue: str = Field("", description="the waiting entries, packed (see pack)")
    promises: list[Promise] = Field(default_factory=list)
    cluster_vms: int = 0
    cluster_memory_bytes: int = 0
    summary_at: datetime | None = None
    liveness_cursor: int = 0
