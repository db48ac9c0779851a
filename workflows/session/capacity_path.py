"""The capacity path of a session under a global cap: claim warm nodes, then queue in the capacity
broker for the cold ones (phase queued). The current version (CAPACITY_TICKETS_PATCH, with
CAPACITY_BOUNDED_PATCH) and the first one, kept for the replay of runs that started on it.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from labs.models import format_duration
    from workflows.capacity.gate import CapacityRefused
    from workflows.models import CapacityAsk, Phase
    from workflows.session.calls import CALL_FAILED, CLUSTER_CALL, bounded_call, options_call
    from workflows.session.failures import SessionFailed, cause_of
    from workflows.session.patches import (
        CAPACITY_BOUNDED_PATCH,
        CAPACITY_TICKETS_PATCH,
        CLAIM_ASKS_FLOW,
        session_patched,
    )
    from workflows.session.steps import SessionSteps
    from workflows.webhooks import EventType


class CapacityPath(SessionSteps):
    """Claim, then wait for room under the cap; `end` cuts it short."""

    async def _claim_and_queue_for_capacity(self) -> str | None:
        """Warm nodes first; when some must be cold-provisioned and a global cap is set, wait for room
        in the capacity broker's FIFO queue (phase queued, bounded by `max_queue_wait`, outside the
        provisioning-overdue limit). The claim and the broker calls are bounded by the
        provisioning_overdue budget, and `end` cuts them short at once. Returns the end reason if the
        student ended the lab meanwhile."""
        if not session_patched(CAPACITY_TICKETS_PATCH):
            return await self._claim_and_queue_v1()
        steps = asyncio.create_task(self._claim_and_admit())
        await workflow.wait_condition(lambda: steps.done() or self._end_reason is not None)
        if not steps.done():
            steps.cancel()
            await workflow.wait([steps])
            return self._end_reason
        ended = steps.result()
        if ended is None and self._phase == Phase.QUEUED:
            self._enter(Phase.CLAIMING)
        return ended

    async def _claim_and_admit(self) -> str | None:
        budget = self._input.timings.provisioning_overdue
        bounded = session_patched(CAPACITY_BOUNDED_PATCH)
        self._capacity.first_version = not bounded
        limits = self._input.capacity
        ask = None
        if bounded and limits is not None and self._input.flow >= CLAIM_ASKS_FLOW:
            ask = CapacityAsk(limits=limits, requested_at=workflow.now(), memory_by_class=self._memory_by_class())
        try:
            await self._claim_warm_nodes(
                bounded_call(workflow.now() + budget, "claim warm nodes") if bounded
                else options_call(replace(CLUSTER_CALL, schedule_to_close=budget)),
                prepare=True, ask=ask,
            )
        except CALL_FAILED as error:
            raise SessionFailed(
                "overdue", f"could not claim nodes within {format_duration(budget)}: {cause_of(error)}"
            ) from None
        if limits is None or all(node.warm for node in self._nodes):
            return None

        def queued(position: int) -> None:
            if self._phase != Phase.QUEUED:
                self._enter(Phase.QUEUED)
                self._emit(EventType.LAB_QUEUED, position=position)

        def holds_warm_nodes() -> bool:
            return any(node.warm for node in self._nodes)

        # No hold-and-wait: a session that must queue gives its warm nodes up first (they count against
        # the cap), else sessions each holding part of the cap could wait for one another forever.
        max_wait = self._input.timings.max_queue_wait
        queue_since = workflow.now()
        try:
            await self._capacity.admit(
                self._session, *self._capacity_need(), limits, max_wait, budget, on_queued=queued,
                stop=lambda: self._end_reason is not None
                or (holds_warm_nodes() and self._capacity.position is not None),
                asked=self._asked_with_claim,
            )
            if not self._capacity.granted and self._end_reason is None and holds_warm_nodes():
                try:
                    await self._give_up_warm_nodes(
                        bounded_call(workflow.now() + budget, "give warm nodes up") if bounded
                        else options_call(replace(CLUSTER_CALL, schedule_to_close=budget))
                    )
                except CALL_FAILED as error:
                    raise SessionFailed("overdue", f"could not give warm nodes up within "
                                        f"{format_duration(budget)}: {cause_of(error)}") from None
                left = max(max_wait - (workflow.now() - queue_since), timedelta(seconds=1))
                await self._capacity.admit(
                    self._session, *self._capacity_need(), limits, left, budget, on_queued=queued,
                    stop=lambda: self._end_reason is not None,
                )
        except CapacityRefused as refused:
            raise SessionFailed("no capacity", str(refused)) from None
        except ActivityError as error:  # only the first version (its broker call had a schedule-to-close)
            raise SessionFailed(
                "overdue", f"the capacity broker did not answer within {format_duration(budget)}: {cause_of(error)}"
            ) from None
        return self._end_reason

    async def _claim_and_queue_v1(self) -> str | None:
        """Warm nodes first; when some must be cold-provisioned and a global cap is set, wait for room
        in the capacity broker's FIFO queue (phase queued, bounded by `max_queue_wait`, outside the
        provisioning-overdue limit). Returns the end reason if the student ended the lab meanwhile."""
        await self._claim_warm_nodes()
        limits = self._input.capacity
        if limits is None or all(node.warm for node in self._nodes):
            return None
        classes = self._input.node_classes
        memory = sum(classes[lab_node.node_class].memory_bytes for lab_node in self._lab.nodes)

        def queued(position: int) -> None:
            if self._phase != Phase.QUEUED:
                self._enter(Phase.QUEUED)
                self._emit(EventType.LAB_QUEUED, position=position)

        def holds_warm_nodes() -> bool:
            return any(node.warm for node in self._nodes)

        # No hold-and-wait: a session that must queue gives its warm nodes up first (they count against
        # the cap), else sessions each holding part of the cap could wait for one another forever.
        max_wait = self._input.timings.max_queue_wait
        queue_since = workflow.now()
        try:
            await self._capacity.acquire(
                self._session, len(self._lab.nodes), memory, limits, max_wait, on_queued=queued,
                stop=lambda: self._end_reason is not None
                or (holds_warm_nodes() and self._capacity.position is not None),
            )
            if not self._capacity.granted and self._end_reason is None and holds_warm_nodes():
                await self._give_up_warm_nodes()
                await self._capacity.acquire(
                    self._session, len(self._lab.nodes), memory, limits,
                    max(max_wait - (workflow.now() - queue_since), timedelta(seconds=1)),
                    on_queued=queued, stop=lambda: self._end_reason is not None,
                )
        except CapacityRefused as refused:
            raise SessionFailed("no capacity", str(refused)) from None
        if self._end_reason is not None:
            return self._end_reason
        if self._phase == Phase.QUEUED:
            self._enter(Phase.CLAIMING)
        return None
