"""Teardown: undo exactly what the session created (also a reset's other generation); always runs."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from cluster.models import SessionRef
    from workflows.models import ActivityName, Phase, ReleaseResult, SessionIdInput, TeardownInput
    from workflows.session.calls import TEARDOWN_CALL, local_call
    from workflows.session.failures import cause_of
    from workflows.session.patches import PATCH_TEARDOWN_ACTIVITIES, session_patched
    from workflows.session.state import SessionState


class SessionTeardown(SessionState):
    """Every step idempotent and retried until done."""

    async def _teardown(self) -> None:
        """Undo exactly what this session created; every step is idempotent and retried until done."""
        self._enter(Phase.TEARING_DOWN)
        session = SessionIdInput(session_id=self._session.session_id)
        if self._set_up and self._lab.scripts.teardown:
            try:
                await workflow.execute_activity(
                    ActivityName.RUN_TEARDOWN_SCRIPTS,
                    TeardownInput(session=self._session, scripts=self._lab.scripts.teardown, nodes=self._nodes),
                    start_to_close_timeout=sum((s.timeout for s in self._lab.scripts.teardown), timedelta())
                    + timedelta(minutes=1),
                    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=2),
                    summary="teardown scripts",
                )
            except ActivityError as error:  # best effort: the nodes are deleted anyway
                self._teardown_problems.append(f"teardown scripts: {cause_of(error)}")
        # Regular activities: they retry until the API answers (maybe for an hour) while the workflow
        # stays free to answer `lab status` and validators at once. Runs that tore down with local
        # activities before this patch replay as they ran.
        as_activities = session_patched(PATCH_TEARDOWN_ACTIVITIES)
        for name, result_type in (
            (ActivityName.UNEXPOSE_SSH, None),
            (ActivityName.UNWIRE_SESSION, None),
            (ActivityName.RELEASE_SESSION, ReleaseResult),
        ):
            try:
                if as_activities:
                    await workflow.execute_activity(
                        name, session, result_type=result_type, start_to_close_timeout=TEARDOWN_CALL.start_to_close,
                        retry_policy=TEARDOWN_CALL.retry, summary=f"teardown: {name}",
                    )
                else:
                    await local_call(name, session, result_type, TEARDOWN_CALL)
            except ActivityError as error:  # a permanent error: leave it to the leak collector, say so
                self._teardown_problems.append(f"{name}: {cause_of(error)}")
        if self._other_generation is not None:  # ended in the middle of a reset
            await self._release_generation(self._other_generation)
        try:
            await self._capacity.release(self._session)  # no-op unless the session asked for capacity
        except ActivityError as error:  # the broker drops leases of ended runs by itself
            self._teardown_problems.append(f"capacity release: {cause_of(error)}")

    async def _abandon_preparation(self) -> None:
        preparation = self._preparation
        if preparation is not None and not preparation.done():
            preparation.cancel()
            await workflow.wait([preparation])

    async def _release_generation(self, generation: SessionRef) -> None:
        """Delete one generation's exposure, wiring and nodes (teardown scripts are for the lab's end)."""
        target = SessionIdInput(session_id=generation.session_id)
        for name, result_type in (
            (ActivityName.UNEXPOSE_SSH, None),
            (ActivityName.UNWIRE_SESSION, None),
            (ActivityName.RELEASE_SESSION, ReleaseResult),
        ):
            try:  # regular activities: they retry until the API answers, the workflow stays free meanwhile
                await workflow.execute_activity(
                    name, target, result_type=result_type, start_to_close_timeout=TEARDOWN_CALL.start_to_close,
                    retry_policy=TEARDOWN_CALL.retry, summary=f"reset: {name}",
                )
            except FailureError as error:
                self._teardown_problems.append(f"reset, {name}: {cause_of(error)}")
