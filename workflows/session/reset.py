"""The `reset` update: a fresh generation of nodes for the same session, then the switch-over."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from cluster.models import NodePhase, NodeStatus, SessionRef
    from cluster.naming import session_id
    from labs.models import format_duration
    from workflows.capacity.gate import CapacityRefused
    from workflows.models import ActivityName, NodeRef, Phase, ResetRequest, ResetResult
    from workflows.session.calls import bounded_call, cluster_call
    from workflows.session.failures import SessionFailed, cause_of
    from workflows.session.patches import PAUSE_PATCH
    from workflows.session.steps import SessionSteps
    from workflows.session.teardown import SessionTeardown


ENDED_DURING_RESET = "the lab ended before its new nodes were ready"


class SessionReset(SessionSteps, SessionTeardown):
    """The reset update and its validator."""

    @workflow.update
    async def reset(self, request: ResetRequest) -> ResetResult:
        """Fresh nodes of the same lab in the same session: claimed (warm first) and set up next to the
        old ones, then the student is switched over and the old nodes are deleted. The time left is
        kept (the reset's own time is given back) or restarted (lab file `reset.restart_time`). If the
        new nodes fail, they go, and the lab goes on with the old ones."""
        workflow.patched(PAUSE_PATCH)
        assert self._deadline is not None and self._credentials is not None
        self._busy = "resetting"
        self._resets_used += 1
        since, before = workflow.now(), self._phase
        old = (self._session, self._nodes, self._endpoint)
        self._enter(Phase.RESETTING)
        self._version += 1
        base = session_id(self._input.student_id, self._session.run_id)
        self._other_generation = self._session
        self._session = SessionRef(session_id=f"{base}-r{self._resets_used}", workflow_id=self._session.workflow_id,
                                   run_id=self._session.run_id)
        self._nodes = []
        task = self._reset_task = asyncio.create_task(self._prepare_generation())
        failure: str | None = None
        try:
            await workflow.wait_condition(task.done, timeout=self._input.timings.provisioning_overdue,
                                          timeout_summary="reset overdue")
            task.result()
        except TimeoutError:
            failure = f"the new nodes were not ready within {format_duration(self._input.timings.provisioning_overdue)}"
        except asyncio.CancelledError:
            failure = ENDED_DURING_RESET
        except SessionFailed as error:
            failure = error.detail
        except FailureError as error:
            failure = cause_of(error)
        if failure is not None:
            if not task.done():
                task.cancel()
                await workflow.wait([task])
            await self._release_generation(self._session)  # the new nodes go, the old ones stay
            self._session, self._nodes, self._endpoint = old
            self._other_generation = None
            self._reset_task = None
            self._resets_used -= 1
            self._enter(before)
            self._busy = None
            self._version += 1
            if failure == ENDED_DURING_RESET:
                raise ApplicationError(f"reset: {failure}", type="ResetStopped")
            raise ApplicationError(f"reset failed, the lab goes on with its nodes: {failure}", type="ResetFailed")
        retired, self._other_generation = self._other_generation, None
        await self._release_generation(retired)
        self._reset_task = None
        done = workflow.now()
        if self._input.reset.restart_time:
            self._deadline = done + self._lab.effective_duration
        else:
            self._deadline += done - since
        self._health_problem = None
        self._enter(before)
        self._busy = None
        self._version += 1
        assert self._endpoint is not None
        return ResetResult(endpoint=self._endpoint, deadline=self._deadline, nodes=self._nodes,
                           resets_left=self._input.reset.max_resets - self._resets_used)

    async def _prepare_generation(self) -> None:
        """The preparation of a lab for `self._session` (a reset's new generation), with the key pair
        the student already has: warm nodes first; the cold rest only once the capacity broker grants
        room for them under the global cap (the old nodes still count until they are released)."""
        await self._claim_warm_nodes(
            bounded_call(workflow.now() + self._input.timings.provisioning_overdue, "claim warm nodes")
        )
        limits = self._input.capacity
        if limits is not None and not all(node.warm for node in self._nodes):
            try:
                await self._capacity.admit(
                    self._session, *self._capacity_need(), limits,
                    self._input.timings.max_queue_wait, self._input.timings.provisioning_overdue,
                    stop=lambda: self._end_reason is not None,
                )
            except CapacityRefused as refused:
                raise SessionFailed("no capacity", f"no capacity for the new nodes: {refused}") from None
            if not self._capacity.granted:
                raise asyncio.CancelledError()  # the lab ended while the reset waited for room
        await self._provision_missing_nodes()
        # One quick look first: a node that failed already fails the reset at once (no waits to cancel).
        looks = await self._all(
            cluster_call(ActivityName.NODE_HEALTH, NodeRef(node_id=n.node_id), NodeStatus, f"status of {n.name}")
            for n in self._nodes
        )
        for node, status in zip(self._nodes, looks, strict=True):
            if status.phase in (NodePhase.FAILED, NodePhase.MISSING):
                raise SessionFailed(f"node {node.name} failed", f"node {node.name} is {status.phase}: {status.reason}")
        await self._wait_until_nodes_ready()
        await self._wire()
        await self._set_up_session()
        await self._expose()

    @reset.validator
    def _validate_reset(self, request: ResetRequest) -> None:
        limits = self._input.reset
        if self._phase != Phase.RUNNING or self._busy or self._end_reason is not None:
            raise ApplicationError(f"reset: the lab is not running (phase {self._phase_shown()})", type="NotRunning")
        if limits.max_resets == 0:
            raise ApplicationError(f"reset: lab {self._lab.name!r} cannot be reset", type="NoResetsLeft")
        if self._resets_used >= limits.max_resets:
            raise ApplicationError(
                f"reset: no resets left ({self._resets_used} of {limits.max_resets} used)", type="NoResetsLeft"
            )
