"""Shared helpers: a worker running the session workflow with given activities, and starting sessions."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.worker import Worker

from activities.cluster_activities import ClusterActivities
from labs.models import Lab
from workflows.lab_session import LabSessionWorkflow
from workflows.models import LabSessionInput, SessionTimings, WaitReadyRequest
from workflows.session.patches import CURRENT_FLOW

from .fakes import NODE_CLASSES, fake_key_pair


@asynccontextmanager
async def session_worker(
    client: Client, port: Any, scripts: Sequence[Callable[..., Any]], task_queue: str | None = None,
    **options: Any,
) -> AsyncIterator[str]:
    task_queue = task_queue or f"tq-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[LabSessionWorkflow],
        activities=[*ClusterActivities(port, key_pair=fake_key_pair).all(), *scripts],
        **options,
    ):
        yield task_queue


async def start_session(
    client: Client, task_queue: str, lab: Lab, *, student: str | None = None, timings: SessionTimings | None = None,
    flow: int = CURRENT_FLOW, **limits: Any,
) -> WorkflowHandle[Any, Any]:
    """`limits`: `pause=PauseLimits(...)`, `reset=ResetLimits(...)` (else the defaults). `flow`: the
    command sequence the run takes (the client's CURRENT_FLOW unless a test pins an older one)."""
    student = student or f"student-{uuid.uuid4().hex[:6]}"
    return await client.start_workflow(
        LabSessionWorkflow.run,
        LabSessionInput(
            student_id=student,
            lab=lab,
            node_classes={n.node_class: NODE_CLASSES[n.node_class] for n in lab.nodes},
            timings=timings or SessionTimings(health_interval=SLOW_HEALTH),
            flow=flow,
            **limits,
        ),
        id=f"lab-session/{student}",
        task_queue=task_queue,
    )

# Health checks every 20 min keep time-skipping histories short; health has its own tests.
SLOW_HEALTH = timedelta(minutes=20)

WAIT = WaitReadyRequest(wait=timedelta(seconds=30))


def close_to(seconds: float, expected: timedelta, slack: float = 5.0) -> bool:
    return abs(seconds - expected.total_seconds()) <= slack


async def refused(handle: object, update: object, request: object) -> str:
    """The message of the failure an update that must be refused ends with."""
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update(update, request)  # type: ignore[attr-defined]
    return str(caught.value.cause)


HISTORIES = Path(__file__).resolve().parents[1] / "histories"


async def record_history(handle: WorkflowHandle[Any, Any], name: str) -> None:
    """With LABRADOR_RECORD_HISTORIES=1, keep this finished session's history for the replay test.

    Only sessions run with the script stand-ins are recorded: their credentials are fake strings. An
    existing history is never overwritten: it stands for runs that took that path with older code
    (a new path gets a new name).
    """
    # LABRADOR_HISTORY_GENERATION names the code the histories come from (`lean-`: the lean start)
    path = HISTORIES / f"{os.environ.get('LABRADOR_HISTORY_GENERATION', '')}{name}.json"
    if os.environ.get("LABRADOR_RECORD_HISTORIES") != "1" or path.exists():
        return
    history = await handle.fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    path.write_text(history.to_json())
