"""One student's run of a lab, as a durable story.

    claim warm nodes -> cold-provision the rest -> wait until every node is ready -> wire the session
    network -> set up (credentials, setup scripts) -> expose SSH -> READY
    -> wait for: end signal | expiry (from ready, moved by extend) | unclaimed credentials | dead node
    -> final grading -> teardown (always) -> result

Time rules: the lab's duration counts from READY; a student who does not fetch credentials (the
`wait_ready` update) within `unclaimed_timeout` loses the lab; preparing for longer than
`provisioning_overdue` fails the session. Teardown runs after every outcome (also cancellation and bugs),
but never when the SDK evicts a cached instance: the run tears down once, from its history.

This module keeps the story (`run`: prepare within the limit, wait until the end, grade, tear down);
its parts live in `workflows/session/`, mixins that `LabSessionWorkflow` composes:

- `state.py`: what a session knows (`__init__`), phases, search attributes, the details line, `_all`
- `steps.py`: the activity steps: claim warm nodes, provision, wait ready, wire, set up, expose, checks
- `capacity_path.py`: claim and queue under a global cap (current version and v1, kept for replay)
- `node_health.py`: the node-health watch while the lab runs
- `messages.py`: `wait_ready`, `extend`, `check` updates, the `end` signal, the `status` query
- `pause_resume.py`, `reset.py`: the `pause`/`resume` and `reset` updates
- `events.py`: webhook events; `teardown.py`: teardown and the release of a reset's generation
- `calls.py`: every activity option and the call helpers; `patches.py`: every `workflow.patched` ID;
  `failures.py`: `SessionFailed` and how an activity failure is read

Deterministic code only (see the import contract): activities are called by name.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.common import VersioningBehavior
from temporalio.exceptions import ActivityError, FailureError

# Pure model modules are shared with the sandbox instead of re-imported for every workflow run.
with workflow.unsafe.imports_passed_through():
    from labs.models import format_duration
    from workflows import metrics
    from workflows.models import CheckReport, LabSessionInput, LabSessionResult, Phase
    from workflows.session.capacity_path import CapacityPath
    from workflows.session.failures import SessionFailed, cause_of
    from workflows.session.messages import SessionMessages
    from workflows.session.node_health import NodeHealthWatch
    from workflows.session.patches import HEALTH_WAITS_PATCH, session_patched
    from workflows.session.pause_resume import PAUSE_EXPIRED, PauseAndResume
    from workflows.session.reset import SessionReset
    from workflows.webhooks import EventType

WORKFLOW_NAME = "LabSession"

# Exceptions that mean "a bug in this code". Declared as workflow failures so the session fails (after
# its teardown) instead of retrying a workflow task forever. NondeterminismError is left
# out on purpose: a bad deploy then stalls tasks until it is rolled back instead of failing every lab.
WORKFLOW_BUGS: tuple[type[Exception], ...] = (
    AttributeError,
    TypeError,
    LookupError,
    ValueError,
    AssertionError,
    ArithmeticError,
    NameError,
)


# Not sandboxed: the sandbox re-imports the workflow per run, which cost ~25-35 % of start->ready and
# most of the memory per cached lab (bench/session_overhead.py, docs/session.md). Determinism is guarded
# by the import contract (no I/O modules), tests/session/test_determinism_guard.py (no clock, randomness
# or threads) and the replay of recorded histories.
@workflow.defn(name=WORKFLOW_NAME, failure_exception_types=list(WORKFLOW_BUGS), sandboxed=False)
class LabSessionWorkflow(CapacityPath, PauseAndResume, SessionReset, NodeHealthWatch, SessionMessages):
    @workflow.init
    def __init__(self, request: LabSessionInput) -> None:
        super().__init__(request)

    # --- the story --------------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: LabSessionInput) -> LabSessionResult:
        self._enter(Phase.CLAIMING, first=True)
        checks: CheckReport | None = None
        reraise: BaseException | None = None
        # Teardown runs only after one of the explicit outcomes below, never in a `finally`: when the SDK
        # evicts this instance from the worker's cache it cancels the instance's tasks (a CancelledError
        # with no cancellation request) and refuses every further command by raising its
        # `_WorkflowBeingEvictedError`, a BaseException. Both leave `run` here without reaching the
        # teardown: the run itself goes on elsewhere from its history, and tears down there, once.
        try:
            outcome, checks = await self._live()
        except SessionFailed as failure:
            outcome, self._reason, self._detail = Phase.FAILED, failure.reason, failure.detail
        except FailureError as error:  # an activity's failure (local ones arrive as a bare ApplicationError)
            outcome, self._reason = Phase.FAILED, f"{self._phase} failed: {cause_of(error)}"
        except asyncio.CancelledError as cancelled:
            if workflow.cancellation_reason() is None:  # not a cancel request: the instance is evicted
                raise
            outcome, self._reason, self._detail = Phase.ENDED, "cancelled", "the workflow was cancelled"
            reraise = cancelled
        except WORKFLOW_BUGS as bug:
            outcome, self._reason = Phase.FAILED, f"internal error: {type(bug).__name__}: {bug}"
            reraise = bug
        await self._abandon_preparation()
        await self._teardown()
        self._enter(outcome)
        self._emit(EventType.LAB_ENDED, outcome=str(outcome), reason=self._reason or str(outcome),
                   detail=self._detail or "")
        await self._events_started()
        if reraise is not None:
            self._flush_search_attributes(last=True)
            raise reraise
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._flush_search_attributes(last=True)
        return LabSessionResult(
            student_id=request.student_id,
            lab_name=self._lab.name,
            session_id=self._session.session_id,
            outcome=outcome,
            reason=self._reason or str(outcome),
            detail=self._detail or "",
            score=checks.score if checks else 0,
            max_score=checks.max_score if checks else 0,
            checks=checks,
            phase_seconds=dict(self._phase_seconds),
            teardown_problems=list(self._teardown_problems),
        )

    async def _live(self) -> tuple[Phase, CheckReport | None]:
        """From the claim to the final grading: the outcome, and the grading report if any."""
        ended_early = None
        if self._input.capacity is not None:  # a global cap: claim, then queue for the cold nodes
            ended_early = await self._claim_and_queue_for_capacity()
        if ended_early is None:
            ended_early = await self._prepare_within_limit()
        if ended_early is not None:
            self._reason = ended_early
            return Phase.ENDED, None
        outcome, self._reason = await self._run_until_the_end()
        grade = self._reason != "unclaimed" and (
            self._reason != PAUSE_EXPIRED or self._input.pause.grade_when_expired
        )
        if self._paused_at is not None and (grade or self._lab.scripts.teardown):
            await self._wake_up()  # checks and teardown scripts need running nodes
        checks = await self._final_grading() if grade else None
        if checks is not None:
            self._emit(EventType.LAB_GRADED, score=checks.score, max_score=checks.max_score,
                       results=[{"name": r.name, "node": r.node, "passed": r.passed, "points": r.points,
                                 "max_points": r.max_points} for r in checks.results])
        return outcome, checks

    async def _prepare_within_limit(self) -> str | None:
        """Prepare the lab, bounded by `provisioning_overdue`; returns the end reason if the student
        ended the lab before it became ready."""
        overdue = self._input.timings.provisioning_overdue
        preparation = self._preparation = asyncio.create_task(self._prepare())
        try:
            await workflow.wait_condition(
                lambda: preparation.done() or self._end_reason is not None,
                timeout=overdue,
                timeout_summary="provisioning overdue",
            )
        except TimeoutError:
            stuck_in = self._phase
            await self._abandon_preparation()
            raise SessionFailed(
                "overdue", f"the lab was not ready within {format_duration(overdue)} (stuck in {stuck_in})"
            ) from None
        if not preparation.done():
            await self._abandon_preparation()
            return self._end_reason
        preparation.result()  # re-raises what went wrong while preparing
        self._ready_at = workflow.now()
        self._deadline = self._ready_at + self._lab.effective_duration
        self._enter(Phase.READY)
        metrics.session_ready(self._lab.name, self._started_at, self._ready_at, self._nodes)  # not a command
        self._emit(EventType.LAB_READY, deadline=self._deadline.isoformat())
        return None

    async def _prepare(self) -> None:
        if self._lean_start():  # the key pair comes with the nodes' one call (`prepare_nodes`)
            if not self._nodes:  # not claimed yet (without a cap there is no queue step before)
                await self._claim_warm_nodes(prepare=True)
            self._enter(Phase.PROVISIONING)
            self._credentials = await self._prepare_nodes()
            self._enter(Phase.SETTING_UP)
        else:
            # The student's key pair depends on nothing: made while the nodes are claimed and readied.
            credentials = asyncio.create_task(self._create_credentials())
            if not self._nodes:
                await self._claim_warm_nodes()
            self._enter(Phase.PROVISIONING)
            await self._provision_missing_nodes()
            await self._wait_until_nodes_ready()
            self._enter(Phase.WIRING)
            await self._wire()
            self._enter(Phase.SETTING_UP)
            self._credentials = await credentials
        lean = self._lean_start()  # the setup activity exposes SSH at its end: one call less
        await self._set_up_session(expose=lean)
        self._enter(Phase.EXPOSING)
        await self._expose(unless_exposed=lean)

    async def _run_until_the_end(self) -> tuple[Phase, str]:
        """Wait for whatever comes first: end, expiry, unclaimed credentials, a node that stays down."""
        assert self._ready_at is not None and self._deadline is not None
        health: asyncio.Task[None] | None = asyncio.create_task(self._watch_node_health())
        try:
            while True:
                now = workflow.now()
                if self._end_reason is not None:
                    if self._reset_task is not None and not self._reset_task.done():
                        self._reset_task.cancel()  # the old nodes stay; the new ones go
                    if self._busy is not None:  # a pause/resume under way finishes first
                        await workflow.wait_condition(lambda: self._busy is None)
                    return Phase.ENDED, self._end_reason
                if self._health_failure is not None:
                    raise self._health_failure
                if self._suspended():
                    # Paused (or a pause/resume/reset under way): the lab's timers stand still, the
                    # node-health watch waits (`_suspended`); only the pause's own limit runs.
                    if health is not None and not session_patched(HEALTH_WAITS_PATCH):
                        health.cancel()  # runs paused before the watch learnt to wait: restarted below
                        health = None
                    wake_at = None
                    if self._busy is None and self._paused_at is not None:
                        expires_at = self._pause_expires_at()
                        if now >= expires_at:
                            self._detail = (
                                f"the lab stayed paused past {expires_at:%H:%M:%S} UTC "
                                f"(longest pause {format_duration(self._input.pause.longest)})"
                            )
                            return Phase.EXPIRED, PAUSE_EXPIRED
                        wake_at = expires_at
                    self._seen_version = self._version
                    try:
                        await workflow.wait_condition(
                            lambda: self._version != self._seen_version,
                            timeout=None if wake_at is None else wake_at - now, timeout_summary="pause timer",
                        )
                    except TimeoutError:
                        pass
                    continue
                if health is None:
                    health = asyncio.create_task(self._watch_node_health())
                unclaimed_at = self._ready_at + self._input.timings.unclaimed_timeout + self._paused_total
                if now >= self._deadline:
                    self._detail = f"the lab's time ran out at {self._deadline:%H:%M:%S} UTC"
                    return Phase.EXPIRED, "expired"
                wake_at = self._deadline
                expiring_at = self._expiring_at()
                if expiring_at is not None and now >= expiring_at:
                    self._expiring_sent_for = self._deadline
                    self._emit(EventType.LAB_EXPIRING, deadline=self._deadline.isoformat(),
                               seconds_left=int((self._deadline - now).total_seconds()),
                               suffix=f"{self._deadline:%Y%m%dT%H%M%S}")
                elif expiring_at is not None:
                    wake_at = min(wake_at, expiring_at)
                if not self._picked_up:
                    if now >= unclaimed_at:
                        self._detail = (
                            "credentials were not picked up within "
                            f"{format_duration(self._input.timings.unclaimed_timeout)} of ready"
                        )
                        return Phase.ENDED, "unclaimed"
                    wake_at = min(wake_at, unclaimed_at)
                self._seen_version = self._version
                try:
                    await workflow.wait_condition(
                        lambda: self._version != self._seen_version, timeout=wake_at - now, timeout_summary="lab timer"
                    )
                except TimeoutError:
                    pass
        finally:
            if health is not None:
                health.cancel()

    async def _final_grading(self) -> CheckReport | None:
        self._enter(Phase.GRADING)
        try:
            report = await self._run_checks()
        except ActivityError as error:
            self._detail = (self._detail + "; " if self._detail else "") + f"grading failed: {cause_of(error)}"
            return None
        self._last_check = report
        return report


# PINNED (Worker Versioning, docs/session.md#rolling-upgrades-worker-versioning): a lab finishes on the
# build it started on, so a new build never replays a running lab. The same workflow under the same name,
# registered only by versioned workers: the server refuses a versioning behavior from an unversioned
# worker ("versioning behavior cannot be specified without deployment options"), failing every task.
@workflow.defn(
    name=WORKFLOW_NAME, failure_exception_types=list(WORKFLOW_BUGS), sandboxed=False,
    versioning_behavior=VersioningBehavior.PINNED,
)
class PinnedLabSessionWorkflow(LabSessionWorkflow):
    @workflow.run
    async def run(self, request: LabSessionInput) -> LabSessionResult:
        return await super().run(request)


__all__ = ["WORKFLOW_BUGS", "WORKFLOW_NAME", "LabSessionWorkflow", "PinnedLabSessionWorkflow", "SessionFailed"]
