"""Admin bulk action: end every running lab of a lab name, of a node class, or all, as one workflow.

Visible in the Web UI (`bulk-end/<id>`, its summary says what and why). Nothing that crosses Temporal
grows with the number of labs: the `bulk_end_page` activity pages through Visibility itself and ends one
page of sessions (bounded parallelism inside the activity); the workflow keeps only totals, a bounded
sample of failures and the page token, and continues as new every `PAGES_PER_RUN` pages, so it is
resumable after any crash. Ending is a signal with the reason (the student sees it as the session's
reason; grading and teardown run as usual); `force` terminates instead (a stuck session), after which
the pool refill's leak collection removes what it held. Both are idempotent, so a retried page is safe.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field
from temporalio import workflow
from temporalio.common import RetryPolicy

BULK_END_WORKFLOW = "BulkEnd"
BULK_END_PREFIX = "bulk-end/"
PAGES_PER_RUN = 20
MAX_FAILURES_KEPT = 20


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class BulkSelector(_Model):
    """Which running sessions: `labs` None means every lab; `student_id` narrows to one session."""

    labs: list[str] | None = Field(default=None, description="lab names (a node class: the labs using it)")
    student_id: str | None = None
    description: str = Field(default="every lab", description="what the operator asked for, for the Web UI")


class BulkEndInput(_Model):
    selector: BulkSelector
    reason: str = Field(min_length=1, max_length=200)
    force: bool = Field(default=False, description="terminate instead of the end signal (stuck sessions)")
    parallelism: int = Field(default=10, ge=1, le=50)
    page_size: int | None = Field(default=None, ge=1, le=500, description="default: 5 x parallelism")
    pages_per_run: int = Field(default=PAGES_PER_RUN, ge=1, description="pages before continue-as-new")
    # carried across continue-as-new
    page_token: str | None = None
    ended: int = 0
    failed: int = 0
    failures: list[str] = Field(default_factory=list)


class BulkPageInput(_Model):
    selector: BulkSelector
    reason: str
    force: bool
    page_size: int
    parallelism: int = 10
    page_token: str | None = None


class BulkPageResult(_Model):
    ended: int = 0
    failed: int = 0
    failures: list[str] = Field(default_factory=list, description="at most MAX_FAILURES_KEPT")
    next_page_token: str | None = None


class BulkEndResult(_Model):
    ended: int
    failed: int
    failures: list[str]


def visibility_query(selector: BulkSelector, workflow_type: str = "LabSession") -> str:
    """Running sessions the selector names (names are validated DNS labels / student IDs by the caller)."""
    query = f"WorkflowType = '{workflow_type}' AND ExecutionStatus = 'Running'"
    if selector.labs is not None:
        query += " AND LabName IN (" + ", ".join(f"'{lab}'" for lab in selector.labs) + ")"
    if selector.student_id is not None:
        query += f" AND StudentId = '{selector.student_id}'"
    return query


@workflow.defn(name=BULK_END_WORKFLOW)
class BulkEndWorkflow:
    @workflow.run
    async def run(self, request: BulkEndInput) -> BulkEndResult:
        token, ended, failed, failures = request.page_token, request.ended, request.failed, list(request.failures)
        for _page in range(request.pages_per_run):
            page: BulkPageResult = await workflow.execute_activity(
                "bulk_end_page",
                BulkPageInput(selector=request.selector, reason=request.reason, force=request.force,
                              page_size=request.page_size or request.parallelism * 5, page_token=token,
                              parallelism=request.parallelism),
                result_type=BulkPageResult,
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)),
                summary=f"end a page of {request.selector.description}",
            )
            ended, failed = ended + page.ended, failed + page.failed
            failures = (failures + page.failures)[:MAX_FAILURES_KEPT]
            workflow.set_current_details(f"{ended} ended, {failed} failed ({request.selector.description})")
            token = page.next_page_token
            if token is None:
                return BulkEndResult(ended=ended, failed=failed, failures=failures)
        workflow.continue_as_new(request.model_copy(update={
            "page_token": token, "ended": ended, "failed": failed, "failures": failures,
        }))
