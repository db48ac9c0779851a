"""Does the stack encrypt payloads? Asked by a client without codec keys BEFORE it writes anything.

A client with no key must not start a lab on an encrypted stack: its plaintext input would sit in
history (a worker refusing it afterwards is too late). The client cannot decode the stack's payloads,
but payload *metadata* is never encrypted: every encrypted payload says `encoding: binary/encrypted`
and `encryption-key-id: <id>`. So the stack's advertisement is the payload metadata of:

1. the pool-refill Schedule's workflow input (every deployed stack has it: `labrador schedules apply`,
   and `labrador dev` applies it before it reports ready), read with DescribeSchedule;
2. else the most recent LabSession workflow's start input (a stack without schedules that ran labs);
3. else nothing is known: a fresh stack that never stored a payload has nothing to protect yet.

A keyed client skips this (its payloads are encrypted whatever the stack does). One answer per
LabClient (cached): the cost is one RPC per process, on keyless clients only.
"""

from __future__ import annotations

from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import HistoryEventFilterType
from temporalio.api.workflowservice.v1 import (
    DescribeScheduleRequest,
    GetWorkflowExecutionHistoryRequest,
    ListWorkflowExecutionsRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from labrador.codec import ENCODING, MissingCodecKey, payload_key_id
from workflows.lab_session import WORKFLOW_NAME
from workflows.pool_models import POOL_REFILL_SCHEDULE_ID

_TRANSIENT = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED}


def _encrypted_key(payloads: list[Payload]) -> str | None:
    for payload in payloads:
        if payload.metadata.get("encoding") == ENCODING:
            return payload_key_id(payload)
    return None


async def stack_key_id(client: Client, task_queue: str) -> str | None:
    """The key id the stack serving `task_queue` encrypts with, or None (plaintext, or nothing stored yet).
    Only this task queue's schedule and sessions count: stacks may share a namespace."""
    service = client.workflow_service
    namespace = client.namespace
    try:
        described = await service.describe_schedule(
            DescribeScheduleRequest(namespace=namespace, schedule_id=POOL_REFILL_SCHEDULE_ID)
        )
        action = described.schedule.action.start_workflow
        if action.task_queue.name == task_queue:
            return _encrypted_key(list(action.input.payloads))
    except RPCError as exc:
        if exc.status in _TRANSIENT:
            raise
        # NOT_FOUND (no schedules applied) or UNIMPLEMENTED (the time-skipping test server): next source.
    try:
        listed = await service.list_workflow_executions(
            ListWorkflowExecutionsRequest(
                namespace=namespace, page_size=1,
                query=f"WorkflowType = '{WORKFLOW_NAME}' AND TaskQueue = '{task_queue}'",
            )
        )
        if not listed.executions:
            return None
        execution = listed.executions[0].execution
        history = await service.get_workflow_execution_history(
            GetWorkflowExecutionHistoryRequest(
                namespace=namespace, execution=execution, maximum_page_size=1,
                history_event_filter_type=HistoryEventFilterType.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT,
            )
        )
    except RPCError as exc:
        if exc.status in _TRANSIENT:
            raise
        return None
    for event in history.history.events[:1]:
        started = event.workflow_execution_started_event_attributes
        return _encrypted_key(list(started.input.payloads))
    return None


async def refuse_if_undecodable(client: Client, task_queue: str, has_keys: bool) -> None:
    """MissingCodecKey when this client has no key and the stack encrypts; nothing was sent."""
    if has_keys:
        return
    key_id = await stack_key_id(client, task_queue)
    if key_id is not None:
        raise MissingCodecKey(key_id)
