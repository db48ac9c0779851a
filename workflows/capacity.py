"""The session's side of the capacity broker: ask for room, wait in the FIFO queue, release.

Used by LabSessionWorkflow when it must cold-provision nodes (warm claims need no new capacity):

    gate = CapacityGate()                                  # in __init__: registers the notice signal
    await gate.acquire(session_ref, vms, memory, limits, max_wait, on_queued=...)   # may raise
    ...
    await gate.release(session_ref)                         # in teardown (idempotent, no-op if never asked)

`gate.position` is the 1-based queue position while queued (LabStatus.queue_position).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from cluster.models import SessionRef
    from workflows.capacity_broker import CAPACITY_NOTICE_SIGNAL
    from workflows.pool_models import (
        CapacityLimits,
        CapacityNotice,
        CapacityRelease,
        CapacityRequest,
        PoolActivityName,
    )

RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=10)


class CapacityRefused(Exception):
    """The session cannot get capacity: waited longer than the maximum, or asks more than the cap."""


class CapacityGate:
    def __init__(self) -> None:
        self.granted = False
        self.position: int | None = None
        self.refused: str | None = None
        self._asked = False
        self._on_queued: Callable[[int], None] | None = None
        workflow.set_signal_handler(CAPACITY_NOTICE_SIGNAL, self._on_notice)

    def _on_notice(self, notice: CapacityNotice) -> None:
        if notice.granted:
            self.granted = True
            self.position = None
        elif notice.refused:
            self.refused = notice.refused
        elif notice.position is not None and not self.granted:
            self.position = notice.position
            if self._on_queued is not None:
                self._on_queued(notice.position)

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
        """Return once the broker granted room for `vms` nodes; raise CapacityRefused otherwise.

        `on_queued(position)` runs whenever the broker reports a (new) queue position; `stop()` true
        (the student ended the lab) leaves the queue and returns without a grant."""
        self._asked = True
        self._on_queued = on_queued
        request = CapacityRequest(
            session=session, vms=vms, memory_bytes=memory_bytes, limits=limits, requested_at=workflow.now()
        )
        await workflow.execute_activity(
            PoolActivityName.REQUEST_CAPACITY, request, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RETRY,
        )
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

    async def release(self, session: SessionRef, reason: str = "session ended") -> None:
        """Give the lease (or the queue place) back. A no-op when the session never asked."""
        if not self._asked:
            return
        self._asked = False
        self.granted = False
        self.position = None
        await workflow.execute_activity(
            PoolActivityName.RELEASE_CAPACITY, CapacityRelease(session=session, reason=reason),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=RETRY,
        )
