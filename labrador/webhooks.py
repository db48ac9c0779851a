"""Operators' view of webhook dead letters: list them, replay them (workflows/webhooks.py).

A dead letter is a failed `WebhookDelivery` run: its input holds the event, its failure the URLs that
gave up with their last error. Both are read from the run's history (decrypted by this client's codec).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from temporalio.client import Client

from activities.webhook_activities import _redacted
from cluster.settings import Settings
from workflows.webhooks import (
    WEBHOOK_WORKFLOW,
    DeliveryReport,
    WebhookDeliveryInput,
    WebhookDeliveryWorkflow,
    WebhookEvent,
    delivery_workflow_id,
)

DEAD_QUERY = f"WorkflowType = '{WEBHOOK_WORKFLOW}' AND ExecutionStatus = 'Failed'"


class DeadLetter(BaseModel):
    workflow_id: str
    run_id: str
    event_id: str
    type: str
    closed_at: datetime | None
    dead: dict[str, str]  # redacted URL -> last error
    event: WebhookEvent | None = None
    urls: list[str] = []  # the full URLs (for replay; not printed)


class WebhookError(LookupError):
    pass


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def _read(client: Client, workflow_id: str, run_id: str | None = None) -> DeadLetter:
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    history = await handle.fetch_history()
    events = list(history.events)
    started = events[0].workflow_execution_started_event_attributes
    (request,) = await client.data_converter.decode(started.input.payloads, [WebhookDeliveryInput])
    last = events[-1]
    if not last.HasField("workflow_execution_failed_event_attributes"):
        raise WebhookError(f"webhook delivery {workflow_id}: not dead-lettered (it did not fail)")
    failure: Any = await client.data_converter.decode_failure(last.workflow_execution_failed_event_attributes.failure)
    details = list(getattr(failure, "details", ()) or ())
    report = DeliveryReport.model_validate(details[0]) if details else None
    dead = report.dead if report else {}
    return DeadLetter(
        workflow_id=workflow_id, run_id=history.run_id, event_id=request.event.id, type=str(request.event.type),
        closed_at=last.event_time.ToDatetime() if last.HasField("event_time") else None,
        dead={_redacted(url): error for url, error in dead.items()}, event=request.event, urls=list(dead),
    )


async def dead_letters(client: Client, limit: int = 100) -> list[DeadLetter]:
    found = []
    async for execution in client.list_workflows(DEAD_QUERY, limit=limit):
        found.append(await _read(client, execution.id, execution.run_id))
    return found


async def replay(client: Client, settings: Settings, workflow_id: str) -> str:
    """Send the event of a dead letter again, to its dead URLs only; returns the new delivery's ID."""
    letter = await _read(client, workflow_id)
    assert letter.event is not None
    new_id = f"{delivery_workflow_id(letter.event_id)}/replay-{uuid.uuid4().hex[:8]}"
    await client.start_workflow(
        WebhookDeliveryWorkflow.run, WebhookDeliveryInput(event=letter.event, targets=letter.urls or None),
        id=new_id, task_queue=settings.task_queue, static_summary=f"replay of {workflow_id}",
    )
    return new_id
