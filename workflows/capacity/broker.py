"""CapacityBrokerWorkflow: the one place that decides who may add VMs under the global cap.

A singleton per task queue (ID `labrador-capacity/<task queue>`), started on first use by
update-with-start (or signal-with-start) from an activity. The accounting is workflows/capacity/ledger.py;
this workflow feeds it messages and cluster readings, and tells sessions what it decided.

- `request` (signal): a session asks for room; decided from counters (no cluster call per decision),
  in the same workflow task as the signals that arrived with it; the session is told its grant, its
  ticket and place, or a refusal by signal `capacity_notice`; grants of one decision go out at once.
  (Not an update: Temporal admits 10 updates in flight per workflow.)
- `release` (signal): the session is done (or leaves the queue).
- `reserve_pool` (update): the refill asks room for new pool nodes; nothing while sessions queue.
- `position` / `state` (queries): where a session stands (exact, computed when read), the head of the
  queue and the counters.
- The cluster is read (counts only, `capacity_usage`) when grants are in flight, when the queue is
  blocked and something was released, and every `recheck` while it stays blocked.
- Runs that stopped without releasing are found by a liveness check on a rotating window, and by a
  notice that cannot be delivered to the new head of the queue.
- Continue-as-new carries the whole state as one model (BrokerState).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows.capacity.ledger import Ledger, request_key
    from workflows.capacity.models import (
        CAPACITY_BROKER_WORKFLOW,
        CAPACITY_NOTICE_SIGNAL,
        BrokerState,
        CapacityActivityName,
        CapacityLimits,
        CapacityNotice,
        CapacityRelease,
        CapacityRequest,
        CapacityState,
        CapacityStateRequest,
        CapacityUsage,
        EndedSessions,
        EndedSessionsInput,
        PoolReservation,
        PoolReservationResult,
        PositionRequest,
        SessionRunRef,
        Waiting,
    )

KNOWN_WAIT = timedelta(seconds=20)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=5)


@workflow.defn(name=CAPACITY_BROKER_WORKFLOW, sandboxed=False)
class CapacityBrokerWorkflow:
    @workflow.init
    def __init__(self, state: BrokerState) -> None:
        self._ledger = Ledger(state)
        self._dirty = True
        self._last_liveness: datetime | None = None
        self._head_told: int | None = None
        self._outbox: list[tuple[Waiting, CapacityNotice]] = []
        self._tell_position: set[str] = set()

    @workflow.run
    async def run(self, state: BrokerState) -> None:
        ledger = self._ledger
        while True:
            try:
                await workflow.wait_condition(lambda: self._dirty, timeout=self._next_wake())
            except TimeoutError:
                pass
            self._dirty = False
            if self._reading_wanted():
                await self._read_cluster()
            await self._decide_and_tell()
            if ledger.queue_length and ledger.head_blocked():
                await self._check_liveness()
            info = workflow.info()
            if info.is_continue_as_new_suggested() or info.get_current_history_length() >= (
                ledger.settings.continue_as_new_after
            ):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(ledger.state())

    # --- when to look at the cluster ----------------------------------------------------------------

    def _age(self) -> timedelta | None:
        at = self._ledger.summary_at
        return None if at is None else workflow.now() - at

    def _reading_wanted(self) -> bool:
        ledger, age = self._ledger, self._age()
        if age is None:
            return True
        settings = ledger.settings
        in_flight = bool(ledger.promises)
        blocked = ledger.queue_length > 0 and ledger.head_blocked()
        if blocked and (ledger.stale or age >= settings.recheck):
            return True
        return in_flight and age >= settings.reflect_every

    def _next_wake(self) -> timedelta | None:
        ledger, settings = self._ledger, self._ledger.settings
        waits = []
        if ledger.promises:
            waits.append(settings.reflect_every)
        if ledger.queue_length:
            waits.append(min(settings.recheck, settings.liveness_every))
        return min(waits) if waits else None

    async def _read_cluster(self) -> None:
        ask, settling = self._ledger.usage_request()
        try:
            usage: CapacityUsage = await workflow.execute_activity(
                CapacityActivityName.CAPACITY_USAGE, ask, result_type=CapacityUsage,
                start_to_close_timeout=timedelta(seconds=30), retry_policy=RETRY, summary="cluster usage",
            )
        except ActivityError as error:  # cluster unreachable: keep counting what we had, try next round
            workflow.logger.warning("capacity: cluster reading failed: %s", error.cause or error)
            self._ledger.stale = True
            return
        self._ledger.apply_usage(usage, settling, workflow.now())
        self._dirty = True

    # --- decisions ----------------------------------------------------------------------------------

    async def _decide_and_tell(self) -> None:
        ledger = self._ledger
        decision = ledger.decide()
        outbox, self._outbox = self._outbox, []
        outbox += [(w, CapacityNotice(granted=True, served=ledger.served)) for w in decision.granted]
        outbox += [(w, CapacityNotice(refused=reason, served=ledger.served)) for w, reason in decision.refused]
        for key in sorted(self._tell_position):
            entry = ledger.waiting(key)
            if entry is not None:
                outbox.append((entry, ledger.notice(key)))
                if entry.ticket == (ledger.head() or entry).ticket:
                    self._head_told = entry.ticket
        self._tell_position.clear()
        if outbox:  # grants (and refusals) of one decision go out at once
            await asyncio.gather(*(self._tell(w, n) for w, n in outbox))
        # The new head of the queue is told it is first (one signal per change of head, not one per
        # waiter): a head that cannot be told is gone, and the next one moves up at once.
        while True:
            head = ledger.head()
            if head is None or head.ticket == self._head_told:
                return
            self._head_told = head.ticket
            if await self._tell(head, ledger.notice(request_key(head.workflow_id, head.run_id))):
                return
            ledger.forget_waiting(head.workflow_id, head.run_id)

    async def _tell(self, to: Waiting, notice: CapacityNotice) -> bool:
        handle = workflow.get_external_workflow_handle(to.workflow_id, run_id=to.run_id)
        try:
            await handle.signal(CAPACITY_NOTICE_SIGNAL, notice)
        except Exception as error:  # the run ended meanwhile: its grant settles at the next reading
            workflow.logger.info("session %s not reachable: %s", to.workflow_id, error)
            self._ledger.ended({request_key(to.workflow_id, to.run_id)})
            self._dirty = True
            return False
        return True

    async def _check_liveness(self) -> None:
        now = workflow.now()
        if self._last_liveness is not None and now - self._last_liveness < self._ledger.settings.liveness_every:
            return
        self._last_liveness = now
        refs = self._ledger.liveness_window()
        if not refs:
            return
        try:
            ended: EndedSessions = await workflow.execute_activity(
                CapacityActivityName.ENDED_SESSIONS,
                EndedSessionsInput(sessions=[
                    SessionRunRef(session_id=request_key(w, r), workflow_id=w, run_id=r) for w, r, _ in refs
                ]),
                result_type=EndedSessions, start_to_close_timeout=timedelta(minutes=1), retry_policy=RETRY,
                summary="liveness of holders and waiters",
            )
        except ActivityError as error:
            workflow.logger.warning("capacity: liveness check failed: %s", error.cause or error)
            return
        if ended.session_ids:
            self._ledger.ended(set(ended.session_ids))
            self._dirty = True

    # --- messages -----------------------------------------------------------------------------------

    async def _known(self) -> None:
        """A fresh broker reads the cluster first (its run loop does): decisions wait for that."""
        if not self._ledger.known:
            self._dirty = True
            try:
                await workflow.wait_condition(lambda: self._ledger.known, timeout=KNOWN_WAIT)
            except TimeoutError:
                pass

    @workflow.signal
    def request(self, request: CapacityRequest) -> None:
        """A session asks (through `pool_admit_capacity` or, before ticket numbers, `pool_request_capacity`):
        queued, then told its place (at once and when it reaches the head) and its grant, by signal."""
        answer = self._ledger.ask(request, workflow.now(), notify=True)
        key = request_key(request.session.workflow_id, request.session.run_id)
        if answer.position is None:  # refused, or asked again after its grant: tell it again
            to = Waiting(ticket=0, workflow_id=request.session.workflow_id, run_id=request.session.run_id,
                         session_id=request.session.session_id, vms=request.vms, memory_bytes=request.memory_bytes,
                         new_vms=0, new_memory_bytes=0, since=workflow.now())
            self._outbox.append((to, answer))
        else:
            self._tell_position.add(key)  # after the decision, if it still waits
        self._dirty = True

    @workflow.signal
    def release(self, release: CapacityRelease) -> None:
        self._ledger.release(release.session.workflow_id, release.session.run_id)
        self._dirty = True

    @workflow.signal
    def limits(self, limits: CapacityLimits) -> None:
        self._ledger.limits = limits
        self._dirty = True

    @workflow.update
    async def reserve_pool(self, reservation: PoolReservation) -> PoolReservationResult:
        await self._known()
        self._dirty = True
        return self._ledger.reserve_pool(reservation, workflow.now())

    @workflow.query
    def position(self, request: PositionRequest) -> CapacityNotice:
        """Where a session stands now (exact: 1 + the waiting tickets before its own)."""
        return self._ledger.notice(self._ledger.key_of(request.workflow_id, request.run_id))

    @workflow.query
    def state(self, request: CapacityStateRequest | None = None) -> CapacityState:
        return self._ledger.view((request or CapacityStateRequest()).limit)
