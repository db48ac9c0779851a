"""The `pause` and `resume` updates: the VMs paused in place, the lab's clock stopped, then run again."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from labs.models import format_duration
    from workflows.models import (
        ActivityName,
        ClockStepInput,
        ClockStepResult,
        NodeRef,
        PauseRequest,
        PauseResult,
        Phase,
        ResumeRequest,
        ResumeResult,
        SessionIdInput,
    )
    from workflows.session.calls import CHECK_RETRY, CLOCK_STEP_TIMEOUT, PAUSE_CALL, SCRIPT_HEARTBEAT, local_call
    from workflows.session.failures import SessionFailed, cause_of
    from workflows.session.patches import PAUSE_PATCH
    from workflows.session.steps import SessionSteps


PAUSE_EXPIRED = "pause expired"


class PauseAndResume(SessionSteps):
    """Pause/resume updates, their validators, and the wake-up at the end."""

    @workflow.update
    async def pause(self, request: PauseRequest) -> PauseResult:
        """Stop the clock: SSH unexposed, the VMs paused in place (memory and disk kept), the lab's
        timers and node-health watch suspended. The lab keeps its nodes (and so its capacity)."""
        workflow.patched(PAUSE_PATCH)
        self._busy = "pausing"
        self._phase_before_pause = self._phase
        self._paused_at = workflow.now()
        self._pauses_used += 1
        self._enter(Phase.PAUSED)
        self._version += 1
        try:
            await local_call(ActivityName.UNEXPOSE_SSH, SessionIdInput(session_id=self._session.session_id), None,
                         PAUSE_CALL)
            self._endpoint = None
            await self._all(local_call(ActivityName.PAUSE_NODE, NodeRef(node_id=node.node_id), None, PAUSE_CALL)
                            for node in self._nodes)
        except FailureError as error:
            await self._undo_pause(cause_of(error))
            raise ApplicationError(f"pause failed, the lab goes on: {cause_of(error)}", type="PauseFailed") from None
        finally:
            self._busy = None
            self._version += 1
        limits = self._input.pause
        return PauseResult(
            paused_at=self._paused_at, expires_at=self._pause_expires_at(),
            pauses_left=limits.max_pauses - self._pauses_used, pause_time_left=limits.total - self._paused_total,
        )

    async def _undo_pause(self, cause: str) -> None:
        """A pause that failed half-way: run and expose the nodes again, as if nothing happened."""
        try:
            await self._all(local_call(ActivityName.UNPAUSE_NODE, NodeRef(node_id=node.node_id), None, PAUSE_CALL)
                            for node in self._nodes)
            await self._expose()
        except FailureError as error:
            self._health_failure = SessionFailed(
                "pause failed", f"pausing failed ({cause}) and the lab could not be restored: {cause_of(error)}"
            )
        self._paused_at = None
        self._pauses_used -= 1
        self._enter(self._phase_before_pause)

    @pause.validator
    def _validate_pause(self, request: PauseRequest) -> None:
        limits = self._input.pause
        if self._phase not in (Phase.READY, Phase.RUNNING) or self._end_reason is not None or self._busy:
            raise ApplicationError(f"pause: the lab is not running (phase {self._phase_shown()})", type="NotRunning")
        if limits.max_pauses == 0:
            raise ApplicationError(f"pause: lab {self._lab.name!r} cannot be paused", type="NoPausesLeft")
        if self._pauses_used >= limits.max_pauses:
            raise ApplicationError(
                f"pause: no pauses left ({self._pauses_used} of {limits.max_pauses} used)", type="NoPausesLeft"
            )
        if self._paused_total >= limits.total:
            raise ApplicationError(
                f"pause: no pause time left ({format_duration(limits.total)} of paused time used)",
                type="NoPauseTimeLeft",
            )

    @workflow.update
    async def resume(self, request: ResumeRequest) -> ResumeResult:
        """Run the VMs again, step their clocks, expose SSH again (maybe on a new port) and move the
        deadline by the time spent paused. A node that does not come back fails the lab."""
        workflow.patched(PAUSE_PATCH)
        assert self._paused_at is not None and self._deadline is not None
        self._busy = "resuming"
        self._update_details()
        try:
            await self._all(local_call(ActivityName.UNPAUSE_NODE, NodeRef(node_id=node.node_id), None, PAUSE_CALL)
                            for node in self._nodes)
            await self._wait_until_nodes_ready()
            clocks = await self._step_clocks()
            await self._expose()  # before the student is told: the clocks are right by now
        except (FailureError, SessionFailed) as error:
            cause = error.detail if isinstance(error, SessionFailed) else cause_of(error)
            self._health_failure = SessionFailed("resume failed", f"the lab could not be resumed: {cause}")
            self._busy = None
            self._version += 1
            raise ApplicationError(f"resume failed, the lab ends: {cause}", type="ResumeFailed") from None
        paused = workflow.now() - self._paused_at
        self._paused_total += paused
        self._deadline += paused
        self._paused_at = None
        self._busy = None
        self._enter(self._phase_before_pause)
        self._version += 1
        assert self._endpoint is not None
        return ResumeResult(endpoint=self._endpoint, deadline=self._deadline, paused_seconds=paused.total_seconds(),
                            clock_problems=clocks.failed)

    @resume.validator
    def _validate_resume(self, request: ResumeRequest) -> None:
        if self._phase != Phase.PAUSED or self._busy or self._end_reason is not None:
            raise ApplicationError(f"resume: the lab is not paused (phase {self._phase_shown()})", type="NotPaused")

    async def _step_clocks(self) -> ClockStepResult:
        result: ClockStepResult = await workflow.execute_activity(
            ActivityName.STEP_GUEST_CLOCKS,
            ClockStepInput(session=self._session, nodes=self._nodes),
            result_type=ClockStepResult,
            start_to_close_timeout=CLOCK_STEP_TIMEOUT,
            heartbeat_timeout=SCRIPT_HEARTBEAT,
            retry_policy=CHECK_RETRY,
            summary="step guest clocks",
        )
        if result.failed:
            self._detail = "clock not set on " + ", ".join(f"{n} ({why})" for n, why in result.failed.items())
        return result

    async def _wake_up(self) -> None:
        """The lab ends while paused: run the nodes again for grading/teardown scripts (best effort)."""
        try:
            await self._all(local_call(ActivityName.UNPAUSE_NODE, NodeRef(node_id=node.node_id), None, PAUSE_CALL)
                            for node in self._nodes)
            await self._wait_until_nodes_ready()
            await self._step_clocks()
        except (FailureError, SessionFailed) as error:
            cause = error.detail if isinstance(error, SessionFailed) else cause_of(error)
            self._detail = (self._detail + "; " if self._detail else "") + f"nodes not woken up: {cause}"
