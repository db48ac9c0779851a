"""The session's side of the capacity broker: ask for room, wait in the FIFO queue, release.

Used by LabSessionWorkflow when it must cold-provision nodes (warm claims need no new capacity):

    gate = CapacityGate()                       # in __init__; the workflow's `capacity_notice` signal
                                                # handler calls gate.on_notice
    await gate.admit(session, vms, memory, new_vms, new_memory, limits, max_wait, budget, on_queued=..., stop=...)
    ...
    await gate.release(session)                  # in teardown (idempotent, no-op if never asked)

`admit` asks through `ADMIT_CAPACITY` (a local activity: the broker's `request` signal, with-start);
the broker answers with a `capacity_notice` signal (grant, ticket and place, or refusal), not an
update: Temporal admits 10 updates in flight per workflow. `acquire` is the path of sessions started
before ticket numbers (a regular activity, then notices); it stays for their replay (workflow.patched
in workflows/session/capacity_path.py).

`gate.position` is the queue position the session was last told (LabStatus.queue_position; the
client asks the broker for the live one while a lab is queued), `gate.ticket` its FIFO ticket.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from cluster.models import SessionRef
    from workflows.capacity.models import (
        CAPACITY_NOTICE_SIGNAL,
        CapacityActivityName,
        CapacityLimits,
        CapacityNotice,
        CapacityRelease,
        CapacityRequest,
    )
    from workflows.local_calls import in_flight

RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=10)
# Ticket-number path: retried until the workflow's budget (a timer around the call) runs out.
QUICK_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=3)
ADMIT_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5))


class CapacityRefused(Exception):
    """The session cannot get capacity: waited longer than the maximum, or asks more than the cap."""


class CapacityGate:
    def __init__(self, *, register: bool = True) -> None:
        self.granted = False
        self.position: int | None = None
        self.ticket: int | None = None
        self.refused: str | None = None
        self._asked = False
        # The first ticket-number version (replayed only): broker calls as local activities with a
        # schedule-to-close, release as a local activity.
        self.first_version = False
        self._on_queued: Callable[[int], None] | None = None
        if register:  # a dynamic handler (a workflow that declares the signal itself passes False)
            workflow.set_signal_handler(CAPACITY_NOTICE_SIGNAL, self.on_notice)

    def on_notice(self, notice: CapacityNotice) -> None:
        if notice.granted:
            self.granted = True
            self.position = None
        elif notice.refused:
            self.refused = notice.refused
        elif notice.position is not None and not self.granted:
            self.position = notice.position
            self.ticket = notice.ticket if notice.ticket is not None else self.ticket
            if self._on_queued is not None:
                self._on_queued(notice.position)

    async def admit(
        self,
        session: SessionRef,
        vms: int,
        memory_bytes: int,
        new_vms: int,
        new_memory_bytes: int,
        limits: CapacityLimits,
        max_wait: timedelta,
        budget: timedelta,
        on_queued: Callable[[int], None] | None = None,
        stop: Callable[[], bool] = lambda: False,
        asked: bool = False,
    ) -> None:
        """Return once the broker granted room; raise CapacityRefused otherwise. `budget` bounds the
        call to the broker (not the wait in the queue, which `max_wait` bounds); `stop()` true (the
        student ended the lab, or the caller wants out) leaves the queue and returns without a grant.
        `asked`: the claim's call asked already (CLAIM_ASKS_FLOW), with the same numbers; only wait."""
        self._asked = True
        self._on_queued = on_queued
        self.granted, self.refused = False, None
        request = CapacityRequest(
            session=session, vms=vms, memory_bytes=memory_bytes, limits=limits, requested_at=workflow.now(),
            new_vms=new_vms, new_memory_bytes=new_memory_bytes,
        )
        answer: CapacityNotice
        if asked:
            answer = CapacityNotice()  # what the ask answers: the notices come as signals
        elif self.first_version:
            with in_flight():
                answer = await workflow.execute_local_activity(
                    CapacityActivityName.ADMIT_CAPACITY, request, result_type=CapacityNotice,
                    start_to_close_timeout=timedelta(seconds=30), schedule_to_close_timeout=budget,
                    retry_policy=ADMIT_RETRY,
                )
        else:
            answer = await self._ask(request, budget)
        self.on_notice(answer)
        if answer.position is not None and self.position is None:
            self.position = answer.position
        await self._wait(session, limits, max_wait, stop)

    @staticmethod
    async def _ask(request: CapacityRequest, budget: timedelta) -> CapacityNotice:
        """A quick local attempt or three (the common case: one round trip to the broker), then a
        regular activity until `budget` runs out (a local activity retrying in the worker would hold
        the session's workflow task: `end` and queries would wait)."""
        try:
            with in_flight():
                answer: CapacityNotice = await workflow.execute_local_activity(
                    CapacityActivityName.ADMIT_CAPACITY, request, result_type=CapacityNotice,
                    start_to_close_timeout=timedelta(seconds=30), retry_policy=QUICK_RETRY,
                )
            return answer
        except (ActivityError, ApplicationError):
            pass
        try:
            answer = await workflow.execute_activity(
                CapacityActivityName.ADMIT_CAPACITY, request, result_type=CapacityNotice,
                start_to_close_timeout=timedelta(seconds=30), schedule_to_close_timeout=budget,
                retry_policy=ADMIT_RETRY, summary="ask the capacity broker (retry)",
            )
        except ActivityError as error:
            cause = error.cause or error
            raise CapacityRefused(f"the capacity broker did not answer within {budget}: {cause}") from None
        return answer

    async def _wait(
        self, session: SessionRef, limits: CapacityLimits, max_wait: timedelta, stop: Callable[[], bool]
    ) -> None:
        try:
            await workflow.wait_condition(
                lambda: self.granted or self.refused is not None or stop(), timeout=max_wait
            )
        except TimeoutError:
            position = self.position
            await self.release(session, reason="gave up waiting")
            raise CapacityRefused(
                f"no capacity within the maximum queue wait of {max_wait} (still at position {position}): "
                f"the platform is at its cap of {limits.max_vms} VMs"
            ) from None
        if self.refused is not None:
            await self.release(session, reason="refused")
            raise CapacityRefused(self.refused)
        if not self.granted:
            await self.release(session, reason="ended while queued")

    async def acquire(
        self,
        session: SessionRef,
        vms: int,
        memory_bytes: int,
        limits: CapacityLimits,
        max_wait: timedelta,
        on_queued: Callable[[int], None] | None = None,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """The path before ticket numbers (kept for the replay of sessions that took it): signal
        `request` through an activity, then wait for the broker's notices."""
        self._asked = True
        self._on_queued = on_queued
        request = CapacityRequest(
            session=session, vms=vms, memory_bytes=memory_bytes, limits=limits, requested_at=workflow.now()
        )
        await workflow.execute_activity(
            CapacityActivityName.REQUEST_CAPACITY, request, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RETRY,
        )
        await self._wait(session, limits, max_wait, stop)

    def may_have_asked(self) -> None:
        """A call that asks the broker itself (the claim's, CLAIM_ASKS_FLOW) did not say whether it
        asked (it failed or was cancelled): release at the end, as if asked (a release of a session the
        broker does not know changes nothing)."""
        self._asked = True

    async def release(self, session: SessionRef, reason: str = "session ended") -> None:
        """Give the grant (or the queue place) back. A no-op when the session never asked."""
        if not self._asked:
            return
        self._asked = False
        self.granted = False
        self.position = None
        if self.first_version:
            with in_flight():
                await workflow.execute_local_activity(
                    CapacityActivityName.RELEASE_CAPACITY, CapacityRelease(session=session, reason=reason),
                    start_to_close_timeout=timedelta(seconds=30), retry_policy=RETRY,
                )
            return
        await workflow.execute_activity(
            CapacityActivityName.RELEASE_CAPACITY, CapacityRelease(session=session, reason=reason),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=RETRY,
        )
