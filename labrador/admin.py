"""Admin bulk actions for the CLI (`labrador admin end`) and the API (`POST /v1/admin/end`).

`selector()` turns what the operator asked for (a lab, a node class, every lab, one student) into the
Visibility filter of workflows/bulk_end.py, refusing unknown names; `preview()` is the dry run (a count
and one page of the sessions that would be ended, read from Visibility by this client: nothing crosses
Temporal); `start_bulk_end()` starts the BulkEnd workflow that does it.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecutionStatus

from cluster.naming import InvalidName, validate_student_id
from labrador.client import LabError
from labrador.settings import Settings
from labs.models import Catalog
from workflows import search_attributes
from workflows.bulk_end import (
    BULK_END_PREFIX,
    BulkEndInput,
    BulkEndResult,
    BulkEndWorkflow,
    BulkSelector,
    visibility_query,
)
from workflows.lab_session import WORKFLOW_NAME


class Target(BaseModel):
    student_id: str | None
    lab: str | None
    phase: str | None
    started_at: datetime | None


class Preview(BaseModel):
    count: int
    sessions: list[Target]
    next_page_token: str | None = None


class BulkStatus(BaseModel):
    workflow_id: str
    status: str
    result: BulkEndResult | None = None


def selector(catalog: Catalog, *, lab: str | None = None, node_class: str | None = None, every: bool = False,
             student_id: str | None = None) -> BulkSelector:
    chosen = [name for name, value in (("lab", lab), ("node_class", node_class), ("all", every)) if value]
    if len(chosen) != 1 and student_id is None:
        raise LabError("selector: give exactly one of lab, node_class or all (or a student_id)")
    if len(chosen) > 1:
        raise LabError(f"selector: {' and '.join(chosen)} exclude each other")
    if student_id is not None:
        try:
            validate_student_id(student_id)
        except InvalidName as exc:
            raise LabError(str(exc)) from None
    if lab is not None:
        if lab not in catalog.labs:
            raise LabError(f"lab: {lab!r} is not in the catalog (known labs: {', '.join(sorted(catalog.labs))})")
        return BulkSelector(labs=[lab], student_id=student_id, description=f"lab {lab}")
    if node_class is not None:
        if node_class not in catalog.node_classes:
            known = ", ".join(sorted(catalog.node_classes))
            raise LabError(f"node_class: {node_class!r} is not a node class (known: {known})")
        labs = sorted(name for name, item in catalog.labs.items()
                      if any(node.node_class == node_class for node in item.nodes))
        if not labs:
            raise LabError(f"node_class: {node_class!r} is used by no lab of the catalog")
        return BulkSelector(labs=labs, student_id=student_id, description=f"node class {node_class}")
    if student_id is not None and not every:
        return BulkSelector(student_id=student_id, description=f"student {student_id}")
    return BulkSelector(student_id=student_id, description="every lab")


async def preview(client: Client, chosen: BulkSelector, page_size: int = 100, page_token: str | None = None) -> Preview:
    query = visibility_query(chosen, WORKFLOW_NAME)
    try:
        token = base64.urlsafe_b64decode(page_token.encode()) if page_token else None
    except (binascii.Error, ValueError):
        raise LabError(f"page_token: {page_token!r} is not a token from a previous page") from None
    count = (await client.count_workflows(query)).count
    iterator = client.list_workflows(query, page_size=page_size, next_page_token=token)
    await iterator.fetch_next_page()
    sessions = []
    for execution in iterator.current_page or []:
        attrs = execution.typed_search_attributes
        sessions.append(Target(student_id=attrs.get(search_attributes.STUDENT_ID),
                               lab=attrs.get(search_attributes.LAB_NAME), phase=attrs.get(search_attributes.LAB_PHASE),
                               started_at=execution.start_time))
    next_token = iterator.next_page_token
    return Preview(count=count, sessions=sessions,
                   next_page_token=base64.urlsafe_b64encode(next_token).decode() if next_token else None)


async def start_bulk_end(client: Client, settings: Settings, chosen: BulkSelector, reason: str, *, force: bool = False,
                         parallelism: int = 10, request_id: str | None = None, page_size: int | None = None,
                         pages_per_run: int | None = None) -> str:
    """Start the BulkEnd workflow; with `request_id` (an Idempotency-Key) a retry starts nothing new."""
    if not reason.strip():
        raise LabError("reason: must not be empty (the students see it)")
    workflow_id = f"{BULK_END_PREFIX}{request_id or uuid.uuid4().hex[:12]}"
    from temporalio.common import WorkflowIDConflictPolicy

    await client.start_workflow(
        BulkEndWorkflow.run,
        BulkEndInput(selector=chosen, reason=reason, force=force, parallelism=parallelism, page_size=page_size,
                     **({"pages_per_run": pages_per_run} if pages_per_run else {})),
        id=workflow_id, task_queue=settings.task_queue, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"{'force-end' if force else 'end'} {chosen.description}: {reason}"[:200],
    )
    return workflow_id


async def bulk_status(client: Client, workflow_id: str) -> BulkStatus:
    handle = client.get_workflow_handle(workflow_id, result_type=BulkEndResult)
    description = await handle.describe()
    status = description.status or WorkflowExecutionStatus.RUNNING
    result = None
    if status == WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
    return BulkStatus(workflow_id=workflow_id, status=status.name.lower(), result=result)
