"""The student's messages: `wait_ready`, `extend`, `check` (updates), `end` (signal), `status` (query)."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from labs.models import format_duration
    from workflows.capacity.models import CAPACITY_NOTICE_SIGNAL, CapacityNotice
    from workflows.models import (
        CheckReport,
        CheckRequest,
        EndRequest,
        ExtendRequest,
        ExtendResult,
        LabStatus,
        Phase,
        WaitReadyRequest,
        WaitReadyResult,
    )
    from workflows.session.patches import PATCH_ONE_CHECK_AT_A_TIME, session_patched
    from workflows.session.steps import SessionSteps


MAX_WAIT_READY = timedelta(minutes=5)


class SessionMessages(SessionSteps):
    """Updates, signal and query of a running lab (pause/reset live apart)."""

    @workflow.update
    async def wait_ready(self, request: WaitReadyRequest) -> WaitReadyResult:
        """Credentials once the lab is ready; "not ready yet" after `request.wait`. The first answer
        with credentials starts the student's session (phase running)."""
        try:
            await workflow.wait_condition(
                lambda: self._phase not in _PREPARING and self._phase != Phase.PAUSED and self._busy is None,
                timeout=request.wait, timeout_summary="wait_ready",
            )
        except TimeoutError:
            pass
        if self._phase in (Phase.READY, Phase.RUNNING) and self._credentials and self._endpoint:
            if not self._picked_up:
                self._picked_up = True
                self._version += 1
                self._enter(Phase.RUNNING)
            return WaitReadyResult(
                ready=True, phase=self._phase, endpoint=self._endpoint,
                private_key=self._credentials.private_key, deadline=self._deadline,
            )
        return WaitReadyResult(ready=False, phase=self._phase, deadline=self._deadline, reason=self._reason)

    @wait_ready.validator
    def _validate_wait_ready(self, request: WaitReadyRequest) -> None:
        if request.wait < timedelta(0) or request.wait > MAX_WAIT_READY:
            raise ApplicationError(
                f"wait: {request.wait} is outside 0s..{format_duration(MAX_WAIT_READY)}", type="BadRequest"
            )

    @workflow.update
    async def extend(self, request: ExtendRequest) -> ExtendResult:
        assert self._deadline is not None
        self._extensions_used += 1
        self._deadline = self._deadline + self._lab.extension
        self._version += 1
        self._update_details()
        return ExtendResult(
            deadline=self._deadline,
            extensions_used=self._extensions_used,
            extensions_left=self._lab.max_extensions - self._extensions_used,
        )

    @extend.validator
    def _validate_extend(self, request: ExtendRequest) -> None:
        if self._phase != Phase.RUNNING or self._end_reason is not None or self._deadline is None:
            raise ApplicationError(f"extend: the lab is not running (phase {self._phase})", type="NotRunning")
        if self._extensions_used >= self._lab.max_extensions:
            raise ApplicationError(
                f"extend: no extensions left ({self._extensions_used} of {self._lab.max_extensions} used)",
                type="NoExtensionsLeft",
            )
        timings = self._input.timings
        left = self._deadline - workflow.now()
        if left > timings.extend_window:
            raise ApplicationError(
                f"extend: allowed only in the lab's last {format_duration(timings.extend_window)} "
                f"({_minutes(left)} left, until {self._deadline:%H:%M} UTC)",
                type="TooEarly",
            )
        assert self._ready_at is not None
        # The student's time: from ready to the new deadline, less the time spent paused (it moved the deadline).
        total = self._deadline + self._lab.extension - self._ready_at - self._paused_total
        if total > timings.max_lab_duration:
            raise ApplicationError(
                f"extend: the lab would last {_minutes(total)} in all, more than max_lab_duration "
                f"{format_duration(timings.max_lab_duration)}",
                type="OverMaxDuration",
            )

    @workflow.update
    async def check(self, request: CheckRequest) -> CheckReport:
        if not session_patched(PATCH_ONE_CHECK_AT_A_TIME):  # runs from before: one activity per message
            report = await self._run_checks()
            self._last_check = report
            return report
        if self._check_task is None or self._check_task.done():  # else: join the check that runs
            self._check_started_at = workflow.now()
            self._check_task = asyncio.create_task(self._run_checks())
        report = await self._check_task
        self._last_check = report
        return report

    @check.validator
    def _validate_check(self, request: CheckRequest) -> None:
        if self._phase not in (Phase.READY, Phase.RUNNING):
            raise ApplicationError(f"check: the lab is not ready (phase {self._phase})", type="NotReady")
        if self._check_task is not None and not self._check_task.done():
            return  # a check is running: this message joins it and gets the same report
        interval = self._input.timings.check_min_interval
        if self._check_started_at is not None:
            since = workflow.now() - self._check_started_at
            if since < interval:
                wait = max(1, math.ceil((interval - since).total_seconds()))
                raise ApplicationError(
                    f"check: at most one check every {format_duration(interval)}; the last one started "
                    f"{int(since.total_seconds())}s ago, try again in {wait}s",
                    type="TooSoon",
                )

    @workflow.signal(name=CAPACITY_NOTICE_SIGNAL)
    def capacity_notice(self, notice: CapacityNotice) -> None:
        """The capacity broker's answer: a grant, a place in the queue or a refusal (workflows/capacity)."""
        self._capacity.on_notice(notice)

    @workflow.signal
    def end(self, request: EndRequest) -> None:
        if self._end_reason is None:
            self._end_reason = request.reason or "ended"
            self._version += 1

    @workflow.query
    def status(self) -> LabStatus:
        return LabStatus(
            student_id=self._input.student_id,
            lab_name=self._lab.name,
            session_id=self._session.session_id,
            phase=self._phase,
            started_at=self._started_at,
            ready_at=self._ready_at,
            deadline=self._deadline,
            extensions_used=self._extensions_used,
            nodes=self._nodes,
            nodes_ready=self._nodes_ready if self._phase == Phase.PROVISIONING else None,
            last_check=self._last_check,
            queue_position=self._capacity.position,
            reason=self._reason or self._health_problem,
            detail=self._detail,
            paused_at=self._paused_at,
            pause_expires_at=self._pause_expires_at() if self._paused_at is not None else None,
            pauses_used=self._pauses_used,
            paused_seconds=self._paused_total.total_seconds(),
            resets_used=self._resets_used,
        )


def _minutes(duration: timedelta) -> str:
    """A duration for a refusal, rounded to the minute ("17m", "4h15m")."""
    return format_duration(timedelta(minutes=max(1, round(duration.total_seconds() / 60))))


_PREPARING = frozenset({Phase.QUEUED, Phase.CLAIMING, Phase.PROVISIONING, Phase.WIRING, Phase.SETTING_UP,
                        Phase.EXPOSING})
