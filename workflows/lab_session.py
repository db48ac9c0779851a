"""One student's run of a lab, as a durable story.

    claim warm nodes -> cold-provision the rest -> wait until every node is ready -> wire the session
    network -> set up (credentials, setup scripts) -> expose SSH -> READY
    -> wait for: end signal | expiry (from ready, moved by extend) | unclaimed credentials | dead node
    -> final grading -> teardown (always) -> result

Time rules: the lab's duration counts from READY; a student who does not fetch credentials (the
`wait_ready` update) within `unclaimed_timeout` loses the lab; preparing for longer than
`provisioning_overdue` fails the session. Teardown runs after every outcome (also cancellation and bugs),
but never when the SDK evicts a cached instance: the run tears down once, from its history.

Deterministic code only (see the import contract): activities are called by name.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

# Pure model modules are shared with the sandbox instead of re-imported for every workflow run.
with workflow.unsafe.imports_passed_through():
    from cluster.models import (
        ClaimRequest,
        ClaimResult,
        ClaimWant,
        NodePhase,
        NodeRecord,
        NodeSpec,
        NodeStatus,
        SessionRef,
        SessionWiring,
        SshEndpoint,
    )
    from cluster.naming import dns_label, session_id
    from labs.models import LabNode, format_duration
    from workflows import metrics, search_attributes
    from workflows.capacity.gate import CapacityGate, CapacityRefused
    from workflows.models import (
        ActivityName,
        BoundNode,
        CheckReport,
        CheckRequest,
        ChecksInput,
        ClockStepInput,
        ClockStepResult,
        EndRequest,
        ExposeInput,
        ExtendRequest,
        ExtendResult,
        LabSessionInput,
        LabSessionResult,
        LabStatus,
        NodeRef,
        PauseRequest,
        PauseResult,
        Phase,
        ProvisionInput,
        ReleaseResult,
        ResetRequest,
        ResetResult,
        ResumeRequest,
        ResumeResult,
        SessionCredentials,
        SessionIdInput,
        SetupInput,
        SetupResult,
        TeardownInput,
        WaitReadyInput,
        WaitReadyRequest,
        WaitReadyResult,
    )
    from workflows.webhooks import EventType, WebhookEvent, emit

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

# --- activity options (explicit everywhere) -------------------------------------------------------


@dataclass(frozen=True)
class CallOptions:
    start_to_close: timedelta
    retry: RetryPolicy
    schedule_to_close: timedelta | None = None  # only the replay of CAPACITY_TICKETS_PATCH runs without the next


# Short, idempotent cluster calls run as local activities: no task-queue round trip per call.
CLUSTER_CALL = CallOptions(
    timedelta(seconds=30),
    RetryPolicy(
        initial_interval=timedelta(milliseconds=200),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=0,  # bounded by the provisioning_overdue limit around the preparation
    ),
)
# workflow.patched ID: the capacity path with ticket numbers (admit by update, claim and warm-node
# deletes bounded by the provisioning_overdue budget, `end` raced against them). Sessions started
# before it replay the old path (tests/histories/capacity-v1-*.json).
CAPACITY_TICKETS_PATCH = "capacity-tickets"
# ... and then: the claim, deletes and broker calls as quick local attempts + a regular activity with a
# schedule-to-close (the local activities' schedule-to-close of the first version held the workflow
# task while they retried, so `end` waited; tests/histories/capacity-tickets-v1-*.json replay it).
CAPACITY_BOUNDED_PATCH = "capacity-bounded-calls"
# Teardown must finish: retry transient errors forever (visible as phase tearing-down in the UI).
TEARDOWN_CALL = CallOptions(
    timedelta(seconds=60),
    RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=1),
        maximum_attempts=0,
    ),
)
# A few quick local attempts (~1.5 s in all), then a regular activity if the API is still down: a local
# activity that retries for long keeps its workflow task open, and queries and update validators
# (`lab status`, `extend`) wait behind it; a regular activity's retries leave the workflow free.
QUICK_CLUSTER_CALL = CallOptions(
    timedelta(seconds=30),
    RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0, maximum_attempts=4),
)
CLUSTER_RETRY = CLUSTER_CALL.retry  # as a regular activity: until it answers (bounded by provisioning_overdue)
# Health looks are bounded and short (an unanswered look is not evidence against the node).
HEALTH_CALL = CallOptions(
    timedelta(seconds=20), RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=3)
)
# Patches (docs/session.md "Replay safety"): runs that took the old path keep it on replay.
PATCH_TEARDOWN_ACTIVITIES = "teardown-as-regular-activities"
PATCH_BOUNDED_LOCAL_RETRIES = "bounded-local-retries"
PATCH_ONE_CHECK_AT_A_TIME = "one-check-at-a-time"
PATCH_LOCAL_FAILURES_CAUGHT = "local-activity-failures-caught"
# temporalio 1.35 raises a local activity's final failure as the bare ApplicationError (no ActivityError
# around it, as a regular activity's has): code that handles a local call's failure catches both.
CALL_FAILED = (ActivityError, ApplicationError)
WAIT_READY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=0,
)
CREDENTIALS_CALL = CallOptions(
    timedelta(seconds=30), RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5)
)
SCRIPT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
)
# Checks are not re-run on a failing script (that is a result); only infrastructure errors retry once.
CHECK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=2)
SCRIPT_HEARTBEAT = timedelta(seconds=30)  # the script activities heartbeat every 2 s
# The platform part of setup (student key, kubeadm join, nodes Ready) on top of the lab's own scripts.
SETUP_PLATFORM_STEPS = timedelta(minutes=10)
MAX_WAIT_READY = timedelta(minutes=5)
# Pause/resume answer a waiting student: bounded retries, then the update fails with the cause.
PAUSE_CALL = CallOptions(
    timedelta(seconds=30),
    RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0,
                maximum_interval=timedelta(seconds=5), maximum_attempts=6),
)
CLOCK_STEP_TIMEOUT = timedelta(minutes=2)
# Marks the runs that used pause/resume/reset (recorded the first time one of them runs). Runs that
# never did take exactly the commands they took before these messages existed.
PAUSE_PATCH = "pause-resume-reset"
# The node-health watch waits through a pause instead of being cancelled and restarted (cancelling it
# while its node_health call runs, next to an update's commands, was refused by the test server).
HEALTH_WAITS_PATCH = "pause-health-waits"
# workflow.patched ID: runs that started before webhook events (child starts, the lab.expiring timer).
WEBHOOK_PATCH = "webhook-events"
PAUSE_EXPIRED = "pause expired"
ENDED_DURING_RESET = "the lab ended before its new nodes were ready"


class SessionFailed(Exception):
    """The lab cannot go on; `reason` becomes the session's reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


def _cause(error: BaseException) -> str:
    """The innermost message of an activity failure (the port's clear message)."""
    while isinstance(error, ActivityError) and error.cause is not None:
        error = error.cause
    return getattr(error, "message", None) or str(error) or type(error).__name__


# Not sandboxed: the sandbox re-imports the workflow per run, which cost ~25-35 % of start->ready and
# most of the memory per cached lab (bench/session_overhead.py, docs/session.md). Determinism is guarded
# by the import contract (no I/O modules), tests/session/test_determinism_guard.py (no clock, randomness
# or threads) and the replay of recorded histories.
@workflow.defn(name=WORKFLOW_NAME, failure_exception_types=list(WORKFLOW_BUGS), sandboxed=False)
class LabSessionWorkflow:
    @workflow.init
    def __init__(self, request: LabSessionInput) -> None:
        info = workflow.info()
        self._input = request
        self._lab = request.lab
        self._session = SessionRef(
            session_id=session_id(request.student_id, info.run_id),
            workflow_id=info.workflow_id,
            run_id=info.run_id,
        )
        self._started_at = workflow.now()
        self._phase = Phase.CLAIMING
        self._phase_since = self._started_at
        self._phase_seconds: dict[str, float] = {}
        self._nodes: list[BoundNode] = []
        self._nodes_ready = 0  # of the current readiness wait (status: "provisioning n/m nodes ready")
        self._credentials: SessionCredentials | None = None
        self._endpoint: SshEndpoint | None = None
        self._ready_at: datetime | None = None
        self._deadline: datetime | None = None
        self._extensions_used = 0
        self._picked_up = False
        self._set_up = False
        self._end_reason: str | None = None
        self._health_problem: str | None = None
        self._health_failure: SessionFailed | None = None
        self._last_check: CheckReport | None = None
        self._reason: str | None = None
        self._detail: str | None = None
        self._teardown_problems: list[str] = []
        self._preparation: asyncio.Task[None] | None = None
        # One check at a time per lab (concurrent `check` messages join it), one start per interval.
        self._check_task: asyncio.Task[CheckReport] | None = None
        self._check_started_at: datetime | None = None
        # The pool's capacity queue (workflows/capacity.py): only cold provisions wait in it.
        self._capacity = CapacityGate()
        # Bumped whenever something the waiting loop cares about changes (end, extend, pick-up, health).
        self._version = 0
        self._seen_version = 0
        # Pause/resume/reset (one at a time: `_busy` names the one under way).
        self._busy: str | None = None
        self._paused_at: datetime | None = None
        self._phase_before_pause = Phase.RUNNING
        self._pauses_used = 0
        self._paused_total = timedelta(0)
        self._resets_used = 0
        self._reset_task: asyncio.Task[None] | None = None
        # While a reset runs, the generation that is not `self._session` (the old nodes while the new
        # ones are prepared); teardown releases it too, so an end mid-reset leaks nothing.
        self._other_generation: SessionRef | None = None
        self._event_starts: list[asyncio.Task[None]] = []  # webhook deliveries being started (never delivered here)
        self._expiring_sent_for: datetime | None = None

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
            outcome, self._reason = Phase.FAILED, f"{self._phase} failed: {_cause(error)}"
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
            raise reraise
        await workflow.wait_condition(workflow.all_handlers_finished)
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
        # The student's key pair depends on nothing: made while the nodes are claimed and readied.
        credentials = asyncio.create_task(self._create_credentials())
        if not self._nodes:  # not claimed yet (without a cap there is no queue step before)
            await self._claim_warm_nodes()
        self._enter(Phase.PROVISIONING)
        await self._provision_missing_nodes()
        await self._wait_until_nodes_ready()
        self._enter(Phase.WIRING)
        await self._wire()
        self._enter(Phase.SETTING_UP)
        self._credentials = await credentials
        await self._set_up_session()
        self._enter(Phase.EXPOSING)
        await self._expose()

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
                    if health is not None and not workflow.patched(HEALTH_WAITS_PATCH):
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

    def _suspended(self) -> bool:
        """Paused, or a pause/resume/reset under way: no timers of the lab, no health verdicts."""
        return self._busy is not None or self._phase == Phase.PAUSED

    def _pause_expires_at(self) -> datetime:
        assert self._paused_at is not None
        limits = self._input.pause
        return self._paused_at + min(limits.longest, limits.total - self._paused_total)

    async def _claim_and_queue_for_capacity(self) -> str | None:
        """Warm nodes first; when some must be cold-provisioned and a global cap is set, wait for room
        in the capacity broker's FIFO queue (phase queued, bounded by `max_queue_wait`, outside the
        provisioning-overdue limit). The claim and the broker calls are bounded by the
        provisioning_overdue budget, and `end` cuts them short at once. Returns the end reason if the
        student ended the lab meanwhile."""
        if not workflow.patched(CAPACITY_TICKETS_PATCH):
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
        bounded = workflow.patched(CAPACITY_BOUNDED_PATCH)
        self._capacity.first_version = not bounded
        try:
            await self._claim_warm_nodes(
                self._bounded_call(workflow.now() + budget, "claim warm nodes") if bounded
                else _options_call(replace(CLUSTER_CALL, schedule_to_close=budget))
            )
        except CALL_FAILED as error:
            raise SessionFailed(
                "overdue", f"could not claim nodes within {format_duration(budget)}: {_cause(error)}"
            ) from None
        limits = self._input.capacity
        if limits is None or all(node.warm for node in self._nodes):
            return None
        classes = self._input.node_classes
        lab_nodes = {n.name: n for n in self._lab.nodes}

        def need() -> tuple[int, int, int, int]:
            total = sum(classes[n.node_class].memory_bytes for n in self._lab.nodes)
            cold = [lab_nodes[b.name] for b in self._nodes if not b.warm]
            return len(self._lab.nodes), total, len(cold), sum(classes[n.node_class].memory_bytes for n in cold)

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
                self._session, *need(), limits, max_wait, budget, on_queued=queued,
                stop=lambda: self._end_reason is not None
                or (holds_warm_nodes() and self._capacity.position is not None),
            )
            if not self._capacity.granted and self._end_reason is None and holds_warm_nodes():
                try:
                    await self._give_up_warm_nodes(
                        self._bounded_call(workflow.now() + budget, "give warm nodes up") if bounded
                        else _options_call(replace(CLUSTER_CALL, schedule_to_close=budget))
                    )
                except CALL_FAILED as error:
                    raise SessionFailed("overdue", f"could not give warm nodes up within "
                                        f"{format_duration(budget)}: {_cause(error)}") from None
                left = max(max_wait - (workflow.now() - queue_since), timedelta(seconds=1))
                await self._capacity.admit(
                    self._session, *need(), limits, left, budget, on_queued=queued,
                    stop=lambda: self._end_reason is not None,
                )
        except CapacityRefused as refused:
            raise SessionFailed("no capacity", str(refused)) from None
        except ActivityError as error:  # only the first version (its broker call had a schedule-to-close)
            raise SessionFailed(
                "overdue", f"the capacity broker did not answer within {format_duration(budget)}: {_cause(error)}"
            ) from None
        return self._end_reason

    @staticmethod
    def _bounded_call(deadline: datetime, summary: str) -> Call:
        """Quick local attempts (~1.5 s), then a regular activity retried until `deadline` (the
        server's schedule-to-close). Not a local activity retried for long in the worker: that holds
        the workflow task open, so `end` and queries would wait; a regular activity is cancelled at
        once when the student ends the lab."""

        async def call(name: ActivityName, arg: Any, result_type: type | None) -> Any:
            try:
                return await _local(name, arg, result_type, QUICK_CLUSTER_CALL)
            except CALL_FAILED as error:
                cause = error.cause if isinstance(error, ActivityError) and error.cause is not None else error
                if isinstance(cause, CancelledError) or (isinstance(cause, ApplicationError) and cause.non_retryable):
                    raise
            left = deadline - workflow.now()
            if left <= timedelta(0):
                raise ApplicationError(f"{summary}: the cluster API did not answer", non_retryable=True)
            return await workflow.execute_activity(
                name, arg, result_type=result_type, start_to_close_timeout=CLUSTER_CALL.start_to_close,
                schedule_to_close_timeout=left, retry_policy=CLUSTER_RETRY, summary=f"{summary} (cluster API retry)",
            )

        return call

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

    # --- steps ------------------------------------------------------------------------------------

    async def _claim_warm_nodes(self, call: Call | None = None) -> None:
        """The one claiming step (the pool's capacity queue goes right after it)."""
        call = call or _plain_call
        wants: dict[str, int] = {}
        for node in self._lab.nodes:
            wants[node.node_class] = wants.get(node.node_class, 0) + 1
        claim: ClaimResult = await call(
            ActivityName.CLAIM_NODES,
            ClaimRequest(session=self._session, wants=[ClaimWant(node_class=c, count=n) for c, n in wants.items()]),
            ClaimResult,
        )
        free: dict[str, list[NodeRecord]] = {}
        for record in sorted(claim.nodes, key=lambda r: r.node_id):
            free.setdefault(record.node_class, []).append(record)
        for node_class, wanted in sorted(wants.items()):
            if len(free.get(node_class, [])) < wanted:  # the warm pool had too few: cold nodes follow
                bucket = workflow.now().replace(second=0, microsecond=0)
                bucket = bucket.replace(minute=bucket.minute - bucket.minute % 5)
                self._emit(EventType.POOL_LOW, node_class=node_class, wanted=wanted,
                           claimed=len(free.get(node_class, [])),
                           event_id=f"pool.low.{node_class}.{bucket:%Y%m%dT%H%M}")
        for lab_node in self._lab.nodes:
            candidates = free.get(lab_node.node_class) or []
            if candidates:
                record = candidates.pop(0)
                self._nodes.append(
                    BoundNode(name=lab_node.name, node_id=record.node_id, role=lab_node.role.value, warm=True)
                )
            else:
                self._nodes.append(
                    BoundNode(
                        name=lab_node.name, node_id=self._cold_node_id(lab_node), role=lab_node.role.value, warm=False
                    )
                )

    async def _give_up_warm_nodes(self, call: Call | None = None) -> None:
        """Delete the warm nodes this session claimed and plan cold ones in their place."""
        call = call or _plain_call
        lab_nodes = {n.name: n for n in self._lab.nodes}
        warm = [node for node in self._nodes if node.warm]
        await self._all(call(ActivityName.DELETE_NODE, NodeRef(node_id=node.node_id), None)
                        for node in warm)
        self._nodes = [
            node.model_copy(update={"warm": False, "node_id": self._cold_node_id(lab_nodes[node.name])})
            if node.warm else node
            for node in self._nodes
        ]

    def _cold_node_id(self, lab_node: LabNode) -> str:
        # Deterministic: a retried or replayed provision finds the node it already created.
        return dns_label(self._session.session_id, lab_node.name)

    async def _provision_missing_nodes(self) -> None:
        lab_nodes = {n.name: n for n in self._lab.nodes}
        await self._all(
            self._provision(lab_nodes[node.name], node.node_id) for node in self._nodes if not node.warm
        )

    async def _provision(self, lab_node: LabNode, node_id: str) -> None:
        node_class = self._input.node_classes[lab_node.node_class]
        spec = NodeSpec(
            node_id=node_id,
            node_class=node_class.name,
            role=lab_node.role,
            image=node_class.image,
            kubernetes_version=node_class.kubernetes_version,
            cpu_cores=node_class.cpu_cores,
            memory=node_class.effective_memory,
            disk=node_class.disk,
            session=self._session,
        )
        await _cluster_call(
            ActivityName.PROVISION_NODE, ProvisionInput(spec=spec), NodeRecord, f"provision {lab_node.name}"
        )

    async def _wait_until_nodes_ready(self) -> None:
        self._nodes_ready = 0

        async def counted(node: BoundNode) -> NodeStatus:
            status = await self._node_ready(node)
            self._nodes_ready += 1  # state for the status query only: the commands are the same
            return status

        statuses = await self._all(counted(node) for node in self._nodes)
        self._nodes = [
            node.model_copy(update={"address": status.address, "healthy": True})
            for node, status in zip(self._nodes, statuses, strict=True)
        ]

    async def _node_ready(self, node: BoundNode) -> NodeStatus:
        """One quick look first (warm nodes are ready already), then a heartbeating wait if needed."""
        status: NodeStatus = await _cluster_call(
            ActivityName.NODE_HEALTH, NodeRef(node_id=node.node_id), NodeStatus, f"status of {node.name}"
        )
        if status.phase == NodePhase.READY:
            return status
        overdue = self._input.timings.provisioning_overdue
        try:
            return await workflow.execute_activity(
                ActivityName.WAIT_NODE_READY,
                WaitReadyInput(node_id=node.node_id, timeout=overdue, poll_interval=timedelta(seconds=1)),
                result_type=NodeStatus,
                start_to_close_timeout=overdue + timedelta(minutes=1),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=WAIT_READY_RETRY,
                summary=f"wait for {node.name}",
            )
        except ActivityError as error:
            raise SessionFailed(f"node {node.name} never became ready: {_cause(error)}") from error

    async def _node_status(self, node: BoundNode, options: CallOptions) -> NodeStatus:
        status: NodeStatus = await _local(ActivityName.NODE_HEALTH, NodeRef(node_id=node.node_id), NodeStatus, options)
        return status

    async def _wire(self) -> None:
        controlplane = self._node_named(self._lab.controlplane.name)
        wiring = SessionWiring(
            session=self._session,
            controlplane=controlplane.node_id,
            workers=[n.node_id for n in self._nodes if n.node_id != controlplane.node_id],
        )
        await _cluster_call(ActivityName.WIRE_SESSION, wiring, None, "wire the session")

    async def _create_credentials(self) -> SessionCredentials:
        credentials: SessionCredentials = await _local(
            ActivityName.CREATE_SESSION_CREDENTIALS, self._session, SessionCredentials, CREDENTIALS_CALL
        )
        return credentials

    async def _set_up_session(self) -> None:
        assert self._credentials is not None
        self._set_up = True  # from here on, teardown scripts may have something to undo
        scripts_time = sum((s.timeout for s in self._lab.scripts.setup), timedelta())
        result: SetupResult = await workflow.execute_activity(
            ActivityName.RUN_SETUP,
            SetupInput(
                session=self._session, lab=self._lab, nodes=self._nodes,
                student_public_key=self._credentials.public_key,
            ),
            result_type=SetupResult,
            start_to_close_timeout=scripts_time + SETUP_PLATFORM_STEPS,
            heartbeat_timeout=SCRIPT_HEARTBEAT,
            retry_policy=SCRIPT_RETRY,
            summary="setup scripts",
        )
        # Host keys seen at first contact are pinned for every later connection (checks, teardown).
        self._nodes = [
            node.model_copy(update={"host_key": result.host_keys.get(node.name, node.host_key)})
            for node in self._nodes
        ]
        for script in result.scripts:
            if script.timed_out or script.exit_code != 0:
                what = "timed out" if script.timed_out else f"exited with {script.exit_code}"
                raise SessionFailed(
                    f"setup script {script.script} on {script.node} {what}",
                    f"setup script {script.script} on {script.node} {what}: {script.output[-400:]}",
                )

    async def _expose(self) -> None:
        controlplane = self._node_named(self._lab.controlplane.name)
        self._endpoint = await _cluster_call(
            ActivityName.EXPOSE_SSH,
            ExposeInput(session_id=self._session.session_id, node_id=controlplane.node_id),
            SshEndpoint,
            "expose SSH",
        )

    async def _watch_node_health(self) -> None:
        """Every `health_interval`: a node that is not ready for longer than `health_grace` (or is gone
        for good) fails the session; the status shows the problem meanwhile."""
        timings = self._input.timings
        down_since: dict[str, datetime] = {}
        while True:
            await workflow.sleep(timings.health_interval, summary="node health")
            if self._suspended():  # a paused guest fails every probe: wait until it runs again
                await workflow.wait_condition(lambda: not self._suspended())
                down_since.clear()
                continue
            generation = self._session.session_id
            try:
                statuses = await self._all(self._node_status(node, HEALTH_CALL) for node in self._nodes)
            except ActivityError:
                continue  # the cluster API did not answer: not evidence against the nodes
            except ApplicationError:  # how a local activity's failure arrives
                if not workflow.patched(PATCH_LOCAL_FAILURES_CAUGHT):
                    raise  # runs from before: this ended the health watch
                continue
            if self._suspended() or generation != self._session.session_id:
                continue  # paused or reset while we looked: the answers are about other nodes now
            now = workflow.now()
            problems: list[str] = []
            nodes: list[BoundNode] = []
            for node, status in zip(self._nodes, statuses, strict=True):
                healthy = status.phase == NodePhase.READY
                nodes.append(node.model_copy(update={"healthy": healthy}))
                if healthy:
                    down_since.pop(node.name, None)
                    continue
                since = down_since.setdefault(node.name, now)
                problem = f"node {node.name} is {status.phase}" + (f" ({status.reason})" if status.reason else "")
                problems.append(f"{problem} since {since:%H:%M:%S} UTC")
                gone_for_good = status.phase in (NodePhase.FAILED, NodePhase.MISSING)
                if gone_for_good or now - since >= timings.health_grace:
                    self._health_failure = SessionFailed(
                        f"{problem}, not recovered" if not gone_for_good else problem,
                        f"{problem}; the session cannot continue (grace {format_duration(timings.health_grace)})",
                    )
            self._nodes = nodes
            changed = (self._health_problem is not None) != bool(problems)
            self._health_problem = "; ".join(problems) or None
            if changed:
                self._update_details()
            if self._health_failure is not None:
                self._version += 1
                return

    async def _final_grading(self) -> CheckReport | None:
        self._enter(Phase.GRADING)
        try:
            report = await self._run_checks()
        except ActivityError as error:
            self._detail = (self._detail + "; " if self._detail else "") + f"grading failed: {_cause(error)}"
            return None
        self._last_check = report
        return report

    async def _run_checks(self) -> CheckReport:
        if not self._lab.checks:
            return CheckReport(checked_at=workflow.now())
        checks_time = sum((c.timeout for c in self._lab.checks), timedelta())
        report: CheckReport = await workflow.execute_activity(
            ActivityName.RUN_CHECKS,
            ChecksInput(session=self._session, checks=self._lab.checks, nodes=self._nodes),
            result_type=CheckReport,
            start_to_close_timeout=checks_time + timedelta(minutes=1),
            heartbeat_timeout=SCRIPT_HEARTBEAT,
            retry_policy=CHECK_RETRY,
            summary="checks",
        )
        return report

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
                self._teardown_problems.append(f"teardown scripts: {_cause(error)}")
        # Regular activities: they retry until the API answers (maybe for an hour) while the workflow
        # stays free to answer `lab status` and validators at once. Runs that tore down with local
        # activities before this patch replay as they ran.
        as_activities = workflow.patched(PATCH_TEARDOWN_ACTIVITIES)
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
                    await _local(name, session, result_type, TEARDOWN_CALL)
            except ActivityError as error:  # a permanent error: leave it to the leak collector, say so
                self._teardown_problems.append(f"{name}: {_cause(error)}")
        if self._other_generation is not None:  # ended in the middle of a reset
            await self._release_generation(self._other_generation)
        try:
            await self._capacity.release(self._session)  # no-op unless the session asked for capacity
        except ActivityError as error:  # the broker drops leases of ended runs by itself
            self._teardown_problems.append(f"capacity release: {_cause(error)}")

    async def _abandon_preparation(self) -> None:
        preparation = self._preparation
        if preparation is not None and not preparation.done():
            preparation.cancel()
            await workflow.wait([preparation])

    # --- messages ---------------------------------------------------------------------------------

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
        if not workflow.patched(PATCH_ONE_CHECK_AT_A_TIME):  # runs from before: one activity per message
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

    # --- pause and resume ---------------------------------------------------------------------------

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
            await _local(ActivityName.UNEXPOSE_SSH, SessionIdInput(session_id=self._session.session_id), None,
                         PAUSE_CALL)
            self._endpoint = None
            await self._all(_local(ActivityName.PAUSE_NODE, NodeRef(node_id=node.node_id), None, PAUSE_CALL)
                            for node in self._nodes)
        except FailureError as error:
            await self._undo_pause(_cause(error))
            raise ApplicationError(f"pause failed, the lab goes on: {_cause(error)}", type="PauseFailed") from None
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
            await self._all(_local(ActivityName.UNPAUSE_NODE, NodeRef(node_id=node.node_id), None, PAUSE_CALL)
                            for node in self._nodes)
            await self._expose()
        except FailureError as error:
            self._health_failure = SessionFailed(
                "pause failed", f"pausing failed ({cause}) and the lab could not be restored: {_cause(error)}"
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
            await self._all(_local(ActivityName.UNPAUSE_NODE, NodeRef(node_id=node.node_id), None, PAUSE_CALL)
                            for node in self._nodes)
            await self._wait_until_nodes_ready()
            clocks = await self._step_clocks()
            await self._expose()  # before the student is told: the clocks are right by now
        except (FailureError, SessionFailed) as error:
            cause = error.detail if isinstance(error, SessionFailed) else _cause(error)
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
            await self._all(_local(ActivityName.UNPAUSE_NODE, NodeRef(node_id=node.node_id), None, PAUSE_CALL)
                            for node in self._nodes)
            await self._wait_until_nodes_ready()
            await self._step_clocks()
        except (FailureError, SessionFailed) as error:
            cause = error.detail if isinstance(error, SessionFailed) else _cause(error)
            self._detail = (self._detail + "; " if self._detail else "") + f"nodes not woken up: {cause}"

    # --- reset -------------------------------------------------------------------------------------

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
            failure = _cause(error)
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
            self._bounded_call(workflow.now() + self._input.timings.provisioning_overdue, "claim warm nodes")
        )
        limits = self._input.capacity
        cold = [n for n in self._nodes if not n.warm]
        if limits is not None and cold:
            classes = self._input.node_classes
            lab_nodes = {n.name: n for n in self._lab.nodes}
            memory = [classes[lab_nodes[n.name].node_class].memory_bytes for n in self._nodes]
            cold_memory = sum(classes[lab_nodes[n.name].node_class].memory_bytes for n in cold)
            try:
                await self._capacity.admit(
                    self._session, len(self._nodes), sum(memory), len(cold), cold_memory, limits,
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
            _cluster_call(ActivityName.NODE_HEALTH, NodeRef(node_id=n.node_id), NodeStatus, f"status of {n.name}")
            for n in self._nodes
        )
        for node, status in zip(self._nodes, looks, strict=True):
            if status.phase in (NodePhase.FAILED, NodePhase.MISSING):
                raise SessionFailed(f"node {node.name} failed", f"node {node.name} is {status.phase}: {status.reason}")
        await self._wait_until_nodes_ready()
        await self._wire()
        await self._set_up_session()
        await self._expose()

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
                self._teardown_problems.append(f"reset, {name}: {_cause(error)}")

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

    def _phase_shown(self) -> str:
        return f"{self._phase}, {self._busy}" if self._busy else str(self._phase)

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

    # --- bookkeeping ------------------------------------------------------------------------------

    def _emit(self, kind: EventType, *, suffix: str = "", event_id: str | None = None, **data: Any) -> None:
        """A webhook event: its delivery workflow is started detached (workflows/webhooks.py); the story
        never waits for a receiver. Only with events configured, and behind WEBHOOK_PATCH."""
        if self._input.events is None or not workflow.patched(WEBHOOK_PATCH):
            return
        if kind != EventType.POOL_LOW:
            data = {"student_id": self._input.student_id, "session_id": self._session.session_id,
                    "lab": self._lab.name, "phase": str(self._phase), **data}
        event = WebhookEvent(
            id=event_id or f"{self._session.session_id}.{kind.value}" + (f".{suffix}" if suffix else ""),
            type=kind, timestamp=workflow.now(), data=data,
        )
        self._event_starts.append(asyncio.create_task(emit(event)))

    def _expiring_at(self) -> datetime | None:
        """When lab.expiring is due for the current deadline (None: events off or already sent)."""
        events = self._input.events
        if events is None or self._deadline is None or self._expiring_sent_for == self._deadline:
            return None
        if not workflow.patched(WEBHOOK_PATCH):
            return None
        return self._deadline - events.expiring_before

    async def _events_started(self) -> None:
        """Before the run completes: the deliveries it emitted have started (they then outlive it)."""
        if self._event_starts:
            await asyncio.gather(*self._event_starts)
            self._event_starts.clear()

    def _enter(self, phase: Phase, *, first: bool = False) -> None:
        now = workflow.now()
        if not first:
            spent = (now - self._phase_since).total_seconds()
            self._phase_seconds[self._phase] = self._phase_seconds.get(self._phase, 0.0) + spent
        self._phase, self._phase_since = phase, now
        updates = [search_attributes.LAB_PHASE.value_set(phase.value)]
        if first:
            updates += [
                search_attributes.STUDENT_ID.value_set(self._input.student_id),
                search_attributes.LAB_NAME.value_set(self._lab.name),
            ]
        workflow.upsert_search_attributes(updates)
        self._update_details()

    def _update_details(self) -> None:
        parts = [f"**{self._phase}**", f"student {self._input.student_id}", f"lab {self._lab.name}",
                 f"session {self._session.session_id}"]
        if self._deadline is not None and self._phase in (Phase.READY, Phase.RUNNING):
            parts.append(f"until {self._deadline:%Y-%m-%d %H:%M} UTC ({self._extensions_used} extensions)")
        if self._phase == Phase.PAUSED and self._paused_at is not None:
            parts.append(f"paused since {self._paused_at:%H:%M} UTC, ends at {self._pause_expires_at():%H:%M} UTC"
                         + (f" ({self._busy})" if self._busy else ""))
        if self._health_problem:
            parts.append(f"⚠ {self._health_problem}")
        if self._reason and self._phase in (Phase.ENDED, Phase.EXPIRED, Phase.FAILED, Phase.TEARING_DOWN):
            parts.append(f"reason: {self._reason}")
        workflow.set_current_details(" · ".join(parts))

    def _node_named(self, name: str) -> BoundNode:
        return next(n for n in self._nodes if n.name == name)

    @staticmethod
    async def _all(coroutines: Any) -> list[Any]:
        """Run per-node steps in parallel; the first failure cancels the others and is raised."""
        tasks = [asyncio.create_task(c) for c in coroutines]
        if not tasks:
            return []
        await workflow.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None), None)
        if failed is not None:
            for task in tasks:
                task.cancel()
            await workflow.wait(tasks)
            raise failed.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]


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


def _minutes(duration: timedelta) -> str:
    """A duration for a refusal, rounded to the minute ("17m", "4h15m")."""
    return format_duration(timedelta(minutes=max(1, round(duration.total_seconds() / 60))))


Call = Callable[[ActivityName, Any, "type | None"], Awaitable[Any]]


async def _plain_call(name: ActivityName, arg: Any, result_type: type | None) -> Any:
    return await _local(name, arg, result_type, CLUSTER_CALL)


def _options_call(options: CallOptions) -> Call:
    async def call(name: ActivityName, arg: Any, result_type: type | None) -> Any:
        return await _local(name, arg, result_type, options)

    return call


async def _local(name: ActivityName, arg: Any, result_type: type | None, options: CallOptions) -> Any:
    return await workflow.execute_local_activity(
        name, arg, result_type=result_type, start_to_close_timeout=options.start_to_close, retry_policy=options.retry,
        schedule_to_close_timeout=options.schedule_to_close,
    )


async def _cluster_call(name: ActivityName, arg: Any, result_type: type | None, summary: str) -> Any:
    """A short idempotent cluster call of the preparation: quick local attempts, then (API still down) a
    regular activity retrying until it answers, so that no local activity keeps the workflow task
    open for long. Runs from before the patch replay with their unbounded local retries."""
    if not workflow.patched(PATCH_BOUNDED_LOCAL_RETRIES):
        return await _local(name, arg, result_type, CLUSTER_CALL)
    try:
        return await _local(name, arg, result_type, QUICK_CLUSTER_CALL)
    except CALL_FAILED as error:
        cause = error.cause if isinstance(error, ActivityError) and error.cause is not None else error
        if isinstance(cause, CancelledError) or (isinstance(cause, ApplicationError) and cause.non_retryable):
            raise  # a permanent error (or a cancel): nothing a retry would change
    return await workflow.execute_activity(
        name, arg, result_type=result_type, start_to_close_timeout=CLUSTER_CALL.start_to_close,
        retry_policy=CLUSTER_RETRY, summary=f"{summary} (cluster API retry)",
    )


_PREPARING = frozenset({Phase.QUEUED, Phase.CLAIMING, Phase.PROVISIONING, Phase.WIRING, Phase.SETTING_UP,
                        Phase.EXPOSING})

__all__ = ["WORKFLOW_BUGS", "WORKFLOW_NAME", "LabSessionWorkflow", "PinnedLabSessionWorkflow", "SessionFailed"]
