"""Leak detection asks visibility once for the running lab sessions, not describe() per claimed session."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

import activities.pool_activities as pool_activities
from activities.pool_activities import LAB_SESSION_WORKFLOW, PoolActivities
from cluster.published_images import JsonFilePublishedImages
from workflows.lab_session import WORKFLOW_NAME
from workflows.pool_models import EndedSessionsInput, SessionRunRef

pytestmark = pytest.mark.timeout(60)


def test_the_query_names_the_session_workflow_type() -> None:
    assert LAB_SESSION_WORKFLOW == WORKFLOW_NAME


async def test_running_sessions_come_from_one_visibility_query(
    dev_env: WorkflowEnvironment, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = dev_env.client
    queue = f"nobody-polls-{uuid.uuid4().hex[:8]}"  # the runs stay Running: no worker takes their tasks

    async def start(name: str) -> SessionRunRef:
        handle = await client.start_workflow(LAB_SESSION_WORKFLOW, id=f"lab-session/{name}", task_queue=queue)
        return SessionRunRef(session_id=f"s-{name}", workflow_id=handle.id, run_id=handle.result_run_id)

    running = [await start(f"run-{uuid.uuid4().hex[:6]}") for _ in range(5)]
    ended = await start(f"gone-{uuid.uuid4().hex[:6]}")
    await client.get_workflow_handle(ended.workflow_id or "").terminate("test")
    unknown = SessionRunRef(session_id="s-unknown", workflow_id="lab-session/nobody", run_id=str(uuid.uuid4()))
    ownerless = SessionRunRef(session_id="s-ownerless")
    ids = {r.workflow_id for r in running}
    async with asyncio.timeout(20):  # visibility catches up (with the starts and with the terminate:
        while True:                  # a run it still lists as running counts as running until next round)
            listed = {e.id async for e in client.list_workflows(
                f"WorkflowType = '{LAB_SESSION_WORKFLOW}' AND ExecutionStatus = 'Running'")}
            if ids <= listed and ended.workflow_id not in listed:
                break
            await asyncio.sleep(0.2)

    described: list[str] = []
    real = pool_activities.run_is_running

    async def counting(client_: Any, ref: SessionRunRef) -> bool:
        described.append(ref.session_id)
        return await real(client_, ref)

    monkeypatch.setattr(pool_activities, "run_is_running", counting)
    activities = PoolActivities(port=None, node_classes=dict,  # type: ignore[arg-type]
                                published=JsonFilePublishedImages.in_data_dir(tmp_path), client=client)
    heartbeats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = heartbeats.append
    result = await env.run(activities.ended_sessions,
                           EndedSessionsInput(sessions=[*running, ended, unknown, ownerless]))

    assert set(result.session_ids) == {ended.session_id, unknown.session_id, ownerless.session_id}
    assert sorted(described) == sorted([ended.session_id, unknown.session_id, ownerless.session_id])
    for ref in running:
        await client.get_workflow_handle(ref.workflow_id or "").terminate("test done")
