"""Lab event webhooks: one delivery workflow per event, outliving whatever emitted it.

A session (or anything else) calls `emit(event)`: it starts `WebhookDeliveryWorkflow` as a child with
parent close policy ABANDON and its own ID (`webhook/<event id>`), and waits only for the start, never
for the delivery: a slow or dead receiver never delays a lab, and `lab.ended` is still delivered after
the session's workflow has completed. A second emit of the same event ID is a no-op (dedupe).

The delivery workflow asks `webhook_targets` (settings: URLs and attempts; the secret never leaves the
activity worker) and runs one `deliver_webhook` per URL in parallel, each retried with backoff
(1 s doubling to 10 min, `webhook_max_attempts`). A URL that exhausts its attempts (or answers 410
Gone) is dead-lettered: the workflow fails naming those URLs, so dead letters are the failed
`WebhookDelivery` runs (`labrador webhooks dead` lists them; `labrador webhooks replay` re-sends an
event to its dead URLs). Payloads are encrypted by the codec like every other payload.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

WEBHOOK_WORKFLOW = "WebhookDelivery"
WEBHOOK_ID_PREFIX = "webhook/"


class EventType(StrEnum):
    LAB_QUEUED = "lab.queued"
    LAB_READY = "lab.ready"
    LAB_EXPIRING = "lab.expiring"
    LAB_ENDED = "lab.ended"
    LAB_GRADED = "lab.graded"
    POOL_LOW = "pool.low"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class WebhookEvent(_Model):
    id: str = Field(description="stable per event (the `webhook-id` header): receivers dedupe by it")
    type: EventType
    timestamp: datetime
    data: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {"type": self.type.value, "timestamp": self.timestamp.isoformat(), "data": self.data}


class WebhookDeliveryInput(_Model):
    event: WebhookEvent
    targets: list[str] | None = Field(
        default=None, description="only these URLs (a replay of dead letters); None: the configured URLs"
    )


class WebhookTargets(_Model):
    urls: list[str]
    max_attempts: int = 12


class DeliverInput(_Model):
    event: WebhookEvent
    url: str


class DeliveryReport(_Model):
    event_id: str
    type: EventType
    delivered: list[str] = Field(default_factory=list)
    dead: dict[str, str] = Field(default_factory=dict, description="URL -> last error")


def delivery_workflow_id(event_id: str) -> str:
    return f"{WEBHOOK_ID_PREFIX}{event_id}"


@workflow.defn(name=WEBHOOK_WORKFLOW)
class WebhookDeliveryWorkflow:
    @workflow.run
    async def run(self, request: WebhookDeliveryInput) -> DeliveryReport:
        event = request.event
        targets: WebhookTargets = await workflow.execute_local_activity(
            "webhook_targets", result_type=WebhookTargets, start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=5),
        )
        if request.targets is not None:  # a replay: only the dead URLs
            targets = WebhookTargets(urls=list(request.targets), max_attempts=targets.max_attempts)
        retry = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                            maximum_interval=timedelta(minutes=10), maximum_attempts=targets.max_attempts,
                            non_retryable_error_types=["Gone"])

        async def deliver(url: str) -> str | None:
            try:
                await workflow.execute_activity(
                    "deliver_webhook", DeliverInput(event=event, url=url),
                    start_to_close_timeout=timedelta(seconds=30), retry_policy=retry,
                    summary=f"{event.type} to URL {targets.urls.index(url) + 1}",
                )
                return None
            except ActivityError as error:
                cause: Any = error.cause
                return str(getattr(cause, "message", None) or cause or error)

        outcomes = await asyncio.gather(*(deliver(url) for url in targets.urls))
        report = DeliveryReport(
            event_id=event.id, type=event.type,
            delivered=[url for url, problem in zip(targets.urls, outcomes, strict=True) if problem is None],
            dead={url: problem for url, problem in zip(targets.urls, outcomes, strict=True) if problem is not None},
        )
        if report.dead:
            workflow.metric_meter().create_counter(
                "labrador_webhook_deliveries_total", "webhook deliveries by event type and result"
            ).add(len(report.dead), {"event": event.type.value, "result": "dead"})
            raise ApplicationError(
                f"{event.type} {event.id}: dead-lettered for {len(report.dead)} URL(s) after "
                f"{targets.max_attempts} attempts; replay with `labrador webhooks replay`",
                report.model_dump(mode="json"), type="DeadLetter", non_retryable=True,
            )
        return report


async def emit(event: WebhookEvent) -> None:
    """From a workflow: start the event's delivery, detached (ABANDON), deduplicated by the event ID."""
    try:
        await workflow.start_child_workflow(
            WEBHOOK_WORKFLOW, WebhookDeliveryInput(event=event), id=delivery_workflow_id(event.id),
            parent_close_policy=ParentClosePolicy.ABANDON,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=f"{event.type} {event.id}",
        )
    except WorkflowAlreadyStartedError:  # the same event emitted twice: delivered once
        pass
    except Exception as error:  # never the lab's problem: the event is lost, the lab goes on (logged)
        workflow.logger.warning("webhook %s %s not started: %s", event.type, event.id, error)
