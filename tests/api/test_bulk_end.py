"""Admin bulk end through the API: dry run, a BulkEnd workflow that pages and continues as new, force-end."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus

from labrador import admin
from workflows.lab_session import LabSessionWorkflow

from .conftest import ADMIN_KEY, APP_KEY, Api, Stack

pytestmark = pytest.mark.timeout(120)
LAB = "apiserver-manifest-typo"


async def started(stack: Stack, lab: str, count: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    students = [f"bulk-{tag}-{i}" for i in range(count)]
    await asyncio.gather(*(stack.labs.start(s, lab) for s in students))
    for student in students:
        assert (await stack.labs.wait_ready(student, timedelta(seconds=30))).ready
    return students


async def test_dry_run_then_bulk_end_of_a_lab(api: Api, stack: Stack) -> None:
    mine = await started(stack, LAB, 3)
    (other,) = await started(stack, "sandbox", 1)

    assert (await api.call("POST", "/v1/admin/end", key=APP_KEY, json={"lab": LAB, "reason": "x"}))[0] == 403
    status, problem, _ = await api.call("POST", "/v1/admin/end", key=ADMIN_KEY,
                                        json={"lab": "no-such-lab", "reason": "x"})
    assert (status, problem["field"], problem["value"]) == (422, "lab", "no-such-lab")
    status, problem, _ = await api.call("POST", "/v1/admin/end", key=ADMIN_KEY,
                                        json={"lab": LAB, "all": True, "reason": "x"})
    assert status == 422 and problem["field"] == "selector"

    for _ in range(100):  # Visibility is eventually consistent
        status, preview, _ = await api.call("POST", "/v1/admin/end", key=ADMIN_KEY,
                                            json={"lab": LAB, "reason": "maintenance", "dry_run": True})
        if set(mine) <= {s["student_id"] for s in preview["sessions"]}:
            break
        await asyncio.sleep(0.1)
    assert status == 200 and preview["count"] >= 3
    assert set(mine) <= {s["student_id"] for s in preview["sessions"]}
    assert other not in {s["student_id"] for s in preview["sessions"]}
    assert [(await stack.labs.status(s)).phase for s in mine] == ["running"] * 3  # the dry run changed nothing

    # The real thing, one session per page and two pages per run: it pages and continues as new.
    workflow_id = await admin.start_bulk_end(stack.env.client, stack.settings, admin.selector(
        stack.labs.catalog, lab=LAB), "maintenance at noon", parallelism=1, page_size=1, pages_per_run=2)
    status, state, _ = await api.call("GET", f"/v1/admin/end/{workflow_id.removeprefix('bulk-end/')}",
                                      key=ADMIN_KEY)
    assert status == 200 and state["status"] in ("running", "completed", "continued_as_new")
    for _ in range(300):
        status, state, _ = await api.call("GET", f"/v1/admin/end/{workflow_id.removeprefix('bulk-end/')}",
                                          key=ADMIN_KEY)
        if state["status"] == "completed":
            break
        await asyncio.sleep(0.1)
    assert state["status"] == "completed" and state["ended"] >= 3 and state["failed"] == 0, state
    for _ in range(100):  # Visibility is eventually consistent
        runs = [e async for e in stack.env.client.list_workflows(f"WorkflowId = '{workflow_id}'")]
        if len(runs) >= 2:
            break
        await asyncio.sleep(0.1)
    assert len(runs) >= 2  # continued as new (history per run stays bounded)
    for student in mine:
        result = await stack.labs.result(student)
        assert result.reason == "maintenance at noon"  # what the student sees
    assert (await stack.labs.status(other)).phase == "running"
    await stack.labs.end(other)


async def test_force_end_of_a_stuck_session(api: Api, stack: Stack) -> None:
    (stuck,) = await started(stack, LAB, 1)
    status, body, _ = await api.call("POST", "/v1/admin/end", key=ADMIN_KEY, headers={"Idempotency-Key": stuck},
                                     json={"student_id": stuck, "reason": "stuck", "force": True})
    assert status == 202 and body["selector"] == f"student {stuck}"
    again = await api.call("POST", "/v1/admin/end", key=ADMIN_KEY, headers={"Idempotency-Key": stuck},
                           json={"student_id": stuck, "reason": "stuck", "force": True})
    assert again[1]["workflow_id"] == body["workflow_id"]  # a retry starts nothing new
    await stack.env.client.get_workflow_handle(body["workflow_id"]).result()
    handle = stack.env.client.get_workflow_handle_for(LabSessionWorkflow.run, f"lab-session/{stuck}")
    assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
