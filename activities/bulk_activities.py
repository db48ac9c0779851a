"""One page of a bulk end (workflows/bulk_end.py): list running sessions from Visibility, end them.

Uses the worker's own Temporal client (`activity.client()`). Idempotent: the end signal is ignored by a
session that is already ending, and terminating a run that already closed is not an error.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.service import RPCError, RPCStatusCode

from workflows.bulk_end import MAX_FAILURES_KEPT, BulkPageInput, BulkPageResult, visibility_query
from workflows.lab_session import WORKFLOW_NAME, LabSessionWorkflow
from workflows.models import EndRequest


@activity.defn(name="bulk_end_page")
async def bulk_end_page(request: BulkPageInput) -> BulkPageResult:
    client = activity.client()
    token = base64.b64decode(request.page_token) if request.page_token else None
    iterator = client.list_workflows(visibility_query(request.selector, WORKFLOW_NAME), page_size=request.page_size,
                                     next_page_token=token)
    await iterator.fetch_next_page()
    executions = list(iterator.current_page or [])
    limit = asyncio.Semaphore(request.parallelism)
    failures: list[str] = []

    async def end(workflow_id: str, run_id: str) -> bool:
        async with limit:
            handle = client.get_workflow_handle(workflow_id, run_id=run_id)
            try:
                if request.force:
                    await handle.terminate(reason=request.reason)
                else:
                    await handle.signal(LabSessionWorkflow.end, EndRequest(reason=request.reason))
                return True
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND or "already completed" in exc.message:
                    return True  # ended meanwhile: nothing left to do
                if len(failures) < MAX_FAILURES_KEPT:
                    failures.append(f"{workflow_id}: {exc.message}")
                return False
            finally:
                activity.heartbeat()

    results = await asyncio.gather(*(end(e.id, e.run_id) for e in executions))
    next_token = iterator.next_page_token
    return BulkPageResult(
        ended=sum(results), failed=len(results) - sum(results), failures=failures,
        next_page_token=base64.b64encode(next_token).decode() if next_token else None,
    )


def bulk_activities() -> list[Callable[..., Any]]:
    return [bulk_end_page]
