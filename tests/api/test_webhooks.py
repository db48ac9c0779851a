"""Webhook deliveries on the dev server: signed per Standard Webhooks, retried, dead-lettered, replayed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from labrador import webhooks
from workflows.webhooks import EventType, WebhookDeliveryInput, WebhookDeliveryWorkflow, WebhookEvent

from .conftest import Stack
from .receiver import Receiver

pytestmark = pytest.mark.timeout(60)
SECRET = webhooks.new_secret()


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[Receiver, Receiver]]:
    good = await Receiver(SECRET, fail_first=1).start()
    dead = await Receiver(SECRET, always=500).start()
    yield good, dead
    await good.stop()
    await dead.stop()


def event() -> WebhookEvent:
    return WebhookEvent(id=f"evt-{uuid.uuid4().hex[:8]}", type=EventType.LAB_READY, timestamp=datetime.now(UTC),
                        data={"student_id": "alice", "session_id": "s-alice-1", "lab": "sandbox"})


async def test_retried_until_delivered_dead_letter_listed_and_replayed(
    stack: Stack, receivers: tuple[Receiver, Receiver]
) -> None:
    good, dead = receivers
    stack.settings = stack.settings.model_copy(update={
        "webhook_urls": f"{good.url},{dead.url}?token=hush", "webhook_secret": SecretStr(SECRET),
        "webhook_max_attempts": 2,
    })
    await stack.start_worker()
    sent = event()
    client = stack.env.client
    handle = await client.start_workflow(WebhookDeliveryWorkflow.run, WebhookDeliveryInput(event=sent),
                                         id=f"webhook/{sent.id}", task_queue=stack.settings.task_queue)
    with pytest.raises(Exception, match="failed"):
        await handle.result()
    # The good receiver: one 503, then the retry, verified; the body is {type, timestamp, data}.
    assert good.requests == 2 and good.ids == [sent.id] and not good.rejected
    assert good.events == [sent.body()]
    assert dead.requests == 2  # webhook_max_attempts

    letters: list[webhooks.DeadLetter] = []
    for _ in range(100):  # Visibility is eventually consistent
        letters = [letter for letter in await webhooks.dead_letters(client) if letter.event_id == sent.id]
        if letters:
            break
        await asyncio.sleep(0.1)
    assert len(letters) == 1 and letters[0].type == "lab.ready"
    ((url, error),) = letters[0].dead.items()
    assert url == dead.url and "HTTP 500" in error and "hush" not in url + error  # no query-string secrets

    dead.always = None  # the receiver is fixed: replay goes to it only
    replay_id = await webhooks.replay(client, stack.settings, letters[0].workflow_id)
    await client.get_workflow_handle(replay_id).result()
    assert dead.ids == [sent.id] and good.requests == 2


async def test_a_bad_signature_is_rejected_by_the_receiver(stack: Stack) -> None:
    other = await Receiver(webhooks.new_secret()).start()  # the app has another secret
    try:
        stack.settings = stack.settings.model_copy(update={
            "webhook_urls": other.url, "webhook_secret": SecretStr(SECRET), "webhook_max_attempts": 1,
        })
        await stack.start_worker()
        sent = event()
        handle = await stack.env.client.start_workflow(
            WebhookDeliveryWorkflow.run, WebhookDeliveryInput(event=sent), id=f"webhook/{sent.id}",
            task_queue=stack.settings.task_queue)
        with pytest.raises(Exception, match="failed"):
            await asyncio.wait_for(handle.result(), 20)
        assert other.rejected == ["No matching signature found"] and other.events == []
    finally:
        await other.stop()
