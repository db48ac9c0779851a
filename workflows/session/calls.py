"""How the session workflow calls activities: every option explicit, named by what it is for.

Activities are called by name (workflows.models.ActivityName): no activity code is imported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from workflows.local_calls import in_flight
    from workflows.models import ActivityName
    from workflows.session.failures import CALL_FAILED
    from workflows.session.patches import PATCH_BOUNDED_LOCAL_RETRIES, session_patched


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
# Pause/resume answer a waiting student: bounded retries, then the update fails with the cause.
PAUSE_CALL = CallOptions(
    timedelta(seconds=30),
    RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0,
                maximum_interval=timedelta(seconds=5), maximum_attempts=6),
)
CLOCK_STEP_TIMEOUT = timedelta(minutes=2)


Call = Callable[[ActivityName, Any, "type | None"], Awaitable[Any]]


async def plain_call(name: ActivityName, arg: Any, result_type: type | None) -> Any:
    return await local_call(name, arg, result_type, CLUSTER_CALL)


def options_call(options: CallOptions) -> Call:
    async def call(name: ActivityName, arg: Any, result_type: type | None) -> Any:
        return await local_call(name, arg, result_type, options)

    return call


async def local_call(name: ActivityName, arg: Any, result_type: type | None, options: CallOptions) -> Any:
    with in_flight():
        return await workflow.execute_local_activity(
            name, arg, result_type=result_type, start_to_close_timeout=options.start_to_close,
            retry_policy=options.retry, schedule_to_close_timeout=options.schedule_to_close,
        )


async def cluster_call(name: ActivityName, arg: Any, result_type: type | None, summary: str) -> Any:
    """A short idempotent cluster call of the preparation: quick local attempts, then (API still down) a
    regular activity retrying until it answers, so that no local activity keeps the workflow task
    open for long. Runs from before the patch replay with their unbounded local retries."""
    if not session_patched(PATCH_BOUNDED_LOCAL_RETRIES):
        return await local_call(name, arg, result_type, CLUSTER_CALL)
    try:
        return await local_call(name, arg, result_type, QUICK_CLUSTER_CALL)
    except CALL_FAILED as error:
        cause = error.cause if isinstance(error, ActivityError) and error.cause is not None else error
        if isinstance(cause, CancelledError) or (isinstance(cause, ApplicationError) and cause.non_retryable):
            raise  # a permanent error (or a cancel): nothing a retry would change
    return await workflow.execute_activity(
        name, arg, result_type=result_type, start_to_close_timeout=CLUSTER_CALL.start_to_close,
        retry_policy=CLUSTER_RETRY, summary=f"{summary} (cluster API retry)",
    )


def bounded_call(deadline: datetime, summary: str) -> Call:
    """Quick local attempts (~1.5 s), then a regular activity retried until `deadline` (the
    server's schedule-to-close). Not a local activity retried for long in the worker: that holds
    the workflow task open, so `end` and queries would wait; a regular activity is cancelled at
    once when the student ends the lab."""

    async def call(name: ActivityName, arg: Any, result_type: type | None) -> Any:
        try:
            return await local_call(name, arg, result_type, QUICK_CLUSTER_CALL)
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
