"""CapacityBrokerWorkflow: the one place that decides who may add VMs when the global cap is near.

A singleton per task queue (ID `labrador-capacity-broker/<task queue>`), started on first use by
signal-with-start from an activity.

- A session asks (signal `request`) for room for all its nodes. Requests wait in a FIFO queue; the
  head is granted as soon as it fits under the cap (max VMs and max memory), then the next one, and
  so on: a later small request never overtakes an earlier big one. The broker tells each session its
  grant or its new queue position (signal `capacity_notice` to the session's exact run).
- A granted session holds a *lease* until it releases it (signal `release`, at teardown). Leases of
  runs that are not running any more (terminated without cleanup) are dropped when the queue is
  blocked (checked with the same activity the leak collector uses).
- The pool refill reserves room for the nodes it wants to create (update `reserve_pool`); it gets
  nothing while sessions are queued, so queued sessions always go first.

Usage is the cluster inventory (the truth) corrected by what has been promised but may not exist yet:
for a leased session max(its nodes in the inventory, its lease); for a pool reservation the node if
it is not in the inventory yet. Decisions run one at a time (a lock), each on a fresh inventory.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from cluster.models import Inventory
    from workflows.models import ActivityName
    from workflows.pool_models import (
        CapacityBrokerInput,
        CapacityLimits,
        CapacityNotice,
        CapacityRelease,
        CapacityRequest,
        CapacityState,
        EndedSessions,
        EndedSessionsInput,
        PoolActivityName,
        PoolReservation,
        PoolReservationResult,
        QueueEntry,
        SessionRunRef,
    )

CAPACITY_NOTICE_SIGNAL = "capacity_notice"
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=10)


def request_key(request: CapacityRequest | CapacityRelease) -> str:
    return f"{request.session.workflow_id}/{request.session.run_id}"


class Usage:
    """VMs and memory in use or promised, from one inventory."""

    def __init__(
        self, inventory: Inventory, leases: dict[str, CapacityRequest], holds: dict[str, int]
    ) -> None:
        self._per_session_vms: dict[str, int] = {}
        self._per_session_memory: dict[str, int] = {}
        present = set()
        self.vms = 0
        self.memory = 0
        leased = {lease.session.session_id for lease in leases.values()}
        for node in inventory.nodes:
            present.add(node.node_id)
            if node.session is not None:
                sid = node.session.session_id
                self._per_session_vms[sid] = self._per_session_vms.get(sid, 0) + 1
                self._per_session_memory[sid] = self._per_session_memory.get(sid, 0) + node.memory_bytes
                if sid in leased:
                    continue
            self.vms += 1
            self.memory += node.memory_bytes
        for lease in leases.values():
            self.vms += max(self.session_vms(lease), lease.vms)
            self.memory += max(self.session_memory(lease), lease.memory_bytes)
        for node_id, memory in holds.items():
            if node_id not in present:
                self.vms += 1
                self.memory += memory
        self.present = present

    def session_vms(self, request: CapacityRequest) -> int:
        return self._per_session_vms.get(request.session.session_id, 0)

    def session_memory(self, request: CapacityRequest) -> int:
        return self._per_session_memory.get(request.session.session_id, 0)

    def extra_for(self, request: CapacityRequest) -> tuple[int, int]:
        """What granting the request adds: its nodes already exist (warm claims) and are counted."""
        return (
            max(0, request.vms - self.session_vms(request)),
            max(0, request.memory_bytes - self.session_memory(request)),
        )


@workflow.defn
class CapacityBrokerWorkflow:
    def __init__(self) -> None:
        self._limits = CapacityLimits(max_vms=0, max_memory_bytes=0)
        self._queue: list[CapacityRequest] = []
        self._leases: dict[str, CapacityRequest] = {}
        self._holds: dict[str, int] = {}
        self._hold_expiry: dict[str, datetime] = {}
        self._renotify: set[str] = set()
        self._positions: dict[str, int] = {}
        self._dirty = False
        self._hold_ttl = timedelta(minutes=5)
        self._lock = asyncio.Lock()
        self._last_liveness: datetime | None = None

    @workflow.run
    async def run(self, input: CapacityBrokerInput) -> None:
        self._limits = input.limits
        self._hold_ttl = input.pool_hold_ttl
        self._queue = list(input.queue) + self._queue
        self._leases = {request_key(r): r for r in input.leases} | self._leases
        self._holds = dict(input.pool_holds) | self._holds
        self._hold_expiry = dict(input.pool_hold_expiry) | self._hold_expiry
        self._dirty = self._dirty or bool(self._queue)
        while True:
            try:
                await workflow.wait_condition(
                    lambda: self._dirty, timeout=input.recheck if self._queue or self._renotify else None
                )
            except TimeoutError:
                pass
            self._dirty = False
            if self._queue or self._renotify:
                async with self._lock:
                    try:
                        await self._decide(input)
                    except ActivityError as error:  # cluster or Temporal unreachable: decide next round
                        workflow.logger.warning("capacity decision postponed: %s", error.cause or error)
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    CapacityBrokerInput(
                        limits=self._limits, queue=self._queue, leases=list(self._leases.values()),
                        pool_holds=self._holds, pool_hold_expiry=self._hold_expiry,
                        recheck=input.recheck, pool_hold_ttl=input.pool_hold_ttl,
                    )
                )

    # --- messages -------------------------------------------------------------------------------

    @workflow.signal
    def request(self, request: CapacityRequest) -> None:
        self._limits = request.limits
        key = request_key(request)
        if key in self._leases:
            self._leases[key] = request
            self._renotify.add(key)  # the session asked again (a retried activity): tell it again
            self._dirty = True
        elif all(request_key(r) != key for r in self._queue):
            self._queue.append(request)
            self._dirty = True

    @workflow.signal
    def release(self, release: CapacityRelease) -> None:
        key = request_key(release)
        self._leases.pop(key, None)
        self._queue = [r for r in self._queue if request_key(r) != key]
        self._positions.pop(key, None)
        self._dirty = True

    @workflow.signal
    def limits(self, limits: CapacityLimits) -> None:
        self._limits = limits
        self._dirty = True

    @workflow.update
    async def reserve_pool(self, reservation: PoolReservation) -> PoolReservationResult:
        self._limits = reservation.limits
        async with self._lock:
            if self._queue:
                return PoolReservationResult(
                    reason=f"{len(self._queue)} session(s) queued for capacity go first"
                )
            try:
                usage = await self._usage()
            except ActivityError as error:
                return PoolReservationResult(reason=f"capacity unknown (inventory failed: {error.cause or error})")
            granted: list[str] = []
            vms, memory = usage.vms, usage.memory
            expiry = workflow.now() + self._hold_ttl
            for hold in reservation.nodes:
                if hold.node_id in self._holds:
                    granted.append(hold.node_id)
                    continue
                if vms + 1 > self._limits.max_vms or memory + hold.memory_bytes > self._limits.max_memory_bytes:
                    break
                vms += 1
                memory += hold.memory_bytes
                self._holds[hold.node_id] = hold.memory_bytes
                self._hold_expiry[hold.node_id] = expiry
                granted.append(hold.node_id)
            reason = None
            if len(granted) < len(reservation.nodes):
                reason = f"capacity cap: {vms}/{self._limits.max_vms} VMs in use or promised"
            return PoolReservationResult(granted=granted, reason=reason)

    @workflow.query
    def state(self) -> CapacityState:
        return CapacityState(
            limits=self._limits,
            queue=[
                QueueEntry(
                    position=i + 1, session_id=r.session.session_id, workflow_id=r.session.workflow_id,
                    vms=r.vms, memory_bytes=r.memory_bytes, waiting_since=r.requested_at,
                )
                for i, r in enumerate(self._queue)
            ],
            leased_vms=sum(r.vms for r in self._leases.values()),
            leased_memory_bytes=sum(r.memory_bytes for r in self._leases.values()),
            sessions_holding=len(self._leases),
            pool_holds=len(self._holds),
        )

    # --- decisions ------------------------------------------------------------------------------

    async def _usage(self) -> Usage:
        inventory: Inventory = await workflow.execute_activity(
            ActivityName.INVENTORY, result_type=Inventory, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RETRY,
        )
        now = workflow.now()
        present = {n.node_id for n in inventory.nodes}
        for node_id in list(self._holds):
            expiry = self._hold_expiry.get(node_id)
            if node_id in present or (expiry is not None and expiry < now):
                self._holds.pop(node_id, None)
                self._hold_expiry.pop(node_id, None)
        return Usage(inventory, self._leases, self._holds)

    async def _decide(self, input: CapacityBrokerInput) -> None:
        usage = await self._usage()
        granted: list[CapacityRequest] = []
        refused: list[tuple[CapacityRequest, str]] = []
        vms, memory = usage.vms, usage.memory
        for request in list(self._queue):
            if request.vms > self._limits.max_vms or request.memory_bytes > self._limits.max_memory_bytes:
                refused.append((request, (
                    f"the lab needs {request.vms} VMs / {request.memory_bytes} bytes, more than the platform's "
                    f"cap of {self._limits.max_vms} VMs / {self._limits.max_memory_bytes} bytes"
                )))
                continue
            extra_vms, extra_memory = usage.extra_for(request)
            if vms + extra_vms > self._limits.max_vms or memory + extra_memory > self._limits.max_memory_bytes:
                break  # FIFO: nobody overtakes the head
            vms += extra_vms
            memory += extra_memory
            granted.append(request)
        done = {request_key(r) for r in granted} | {request_key(r) for r, _ in refused}
        self._queue = [r for r in self._queue if request_key(r) not in done]
        for request in granted:
            self._leases[request_key(request)] = request
            await self._notify(request, CapacityNotice(granted=True))
        for key in sorted(self._renotify):
            if key in self._leases:
                await self._notify(self._leases[key], CapacityNotice(granted=True))
        self._renotify.clear()
        for request, reason in refused:
            await self._notify(request, CapacityNotice(refused=reason))
        if self._queue and self._leases:
            await self._drop_ended(input.recheck)
        for key in done:
            self._positions.pop(key, None)
        # Positions come from the live queue at each step: a notice that fails (the run is gone) or a
        # release arriving meanwhile shortens it, and the ones behind must get their real place.
        for request in list(self._queue):
            key = request_key(request)
            keys = [request_key(r) for r in self._queue]
            if key not in keys:
                continue
            position = keys.index(key) + 1
            if self._positions.get(key) != position:
                self._positions[key] = position
                await self._notify(request, CapacityNotice(position=position))

    async def _drop_ended(self, every: timedelta) -> None:
        """Leases and queue entries of runs that ended without releasing (terminated, crashed)."""
        now = workflow.now()
        if self._last_liveness is not None and now - self._last_liveness < every:
            return
        self._last_liveness = now
        refs = {
            r.session.session_id: SessionRunRef(
                session_id=r.session.session_id, workflow_id=r.session.workflow_id, run_id=r.session.run_id
            )
            for r in [*self._leases.values(), *self._queue]
        }
        ended: EndedSessions = await workflow.execute_activity(
            PoolActivityName.ENDED_SESSIONS, EndedSessionsInput(sessions=list(refs.values())),
            result_type=EndedSessions, start_to_close_timeout=timedelta(minutes=1), retry_policy=RETRY,
        )
        gone = set(ended.session_ids)
        if gone:
            self._leases = {k: r for k, r in self._leases.items() if r.session.session_id not in gone}
            self._queue = [r for r in self._queue if r.session.session_id not in gone]
            queued = {request_key(r) for r in self._queue}
            self._positions = {k: p for k, p in self._positions.items() if k in queued}
            self._dirty = True

    async def _notify(self, request: CapacityRequest, notice: CapacityNotice) -> None:
        handle = workflow.get_external_workflow_handle(request.session.workflow_id, run_id=request.session.run_id)
        try:
            await handle.signal(CAPACITY_NOTICE_SIGNAL, notice)
        except (ApplicationError, Exception) as error:  # the session ended meanwhile: forget it
            workflow.logger.info("session %s not reachable: %s", request.session.workflow_id, error)
            key = request_key(request)
            self._leases.pop(key, None)
            self._queue = [r for r in self._queue if request_key(r) != key]
            self._positions.pop(key, None)
            # The queue (or the usage) changed: decide again at once, so that the sessions behind it are
            # told their real place now, not at the next recheck (issue 6: position 2 shown, 1 true).
            self._dirty = True
