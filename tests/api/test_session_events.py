"""A lab's webhook events: emitted by the session, delivered by workflows that outlive it, signed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from pydantic import SecretStr
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.cluster_activities import ClusterActivities
from labrador import webhooks
from labs.models import Role
from tests.session.fakes import MemoryCluster, ScriptStandIns, fake_key_pair, make_lab
from tests.session.helpers import SLOW_HEALTH, record_history, start_session
from workflows.lab_session import LabSessionWorkflow
from workflows.models import Phase, SessionEvents, SessionTimings, WaitReadyRequest
from workflows.webhooks import WebhookDeliveryWorkflow, WebhookTargets

from .conftest import Stack
from .receiver import Receiver

pytestmark = pytest.mark.timeout(90)
SECRET = webhooks.new_secret()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = await Receiver(SECRET).start()
    yield found
    await found.stop()


async def test_events_of_a_lab_reach_the_app_signed_and_after_the_lab_is_gone(
    stack: Stack, receiver: Receiver
) -> None:
    settings = stack.settings.model_copy(update={
        "webhook_urls": receiver.url, "webhook_secret": SecretStr(SECRET), "webhook_max_attempts": 5,
        "webhook_expiring_before": "2h",  # longer than the lab: lab.expiring comes at once
    })
    stack.settings = stack.labs.settings = settings
    await stack.start_worker()
    who = f"events-{uuid.uuid4().hex[:6]}"
    started = await stack.labs.start(who, "apiserver-manifest-typo")
    assert (await stack.labs.wait_ready(who, timedelta(seconds=30))).ready

    ready = await receiver.wait_for("lab.ready")
    assert ready["data"]["student_id"] == who and ready["data"]["session_id"] == started.session_id
    assert ready["data"]["lab"] == "apiserver-manifest-typo" and "private_key" not in str(ready)
    expiring = await receiver.wait_for("lab.expiring")
    assert expiring["data"]["seconds_left"] > 0
    pool_low = await receiver.wait_for("pool.low")  # nothing warm in this cluster: every node is cold
    assert pool_low["data"]["node_class"] and "student_id" not in pool_low["data"]

    receiver.fail_first = 1  # the receiver is down when the lab ends: the delivery retries after the lab is gone
    await stack.labs.end(who, "time for lunch")
    await stack.labs.result(who)
    handle = stack.env.client.get_workflow_handle(started.workflow_id, run_id=started.run_id)
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    ended = await receiver.wait_for("lab.ended")
    assert (ended["data"]["outcome"], ended["data"]["reason"]) == ("ended", "time for lunch")
    graded = await receiver.wait_for("lab.graded")
    assert graded["data"]["max_score"] > 0 and graded["data"]["results"]
    assert not receiver.rejected and len(receiver.ids) == len(set(receiver.ids))  # signed, each once


async def test_no_webhook_urls_no_events(stack: Stack) -> None:
    await stack.start_worker()
    who = f"quiet-{uuid.uuid4().hex[:6]}"
    started = await stack.labs.start(who, "apiserver-manifest-typo")
    assert (await stack.labs.wait_ready(who, timedelta(seconds=30))).ready
    await stack.labs.end(who)
    await stack.labs.result(who)
    history = await stack.env.client.get_workflow_handle(started.workflow_id, run_id=started.run_id).fetch_history()
    assert not any(e.HasField("start_child_workflow_execution_initiated_event_attributes") for e in history.events)
    assert not any(e.HasField("marker_recorded_event_attributes") and
                   "webhook" in str(e.marker_recorded_event_attributes) for e in history.events)


async def test_expiring_follows_the_deadline_and_the_history_is_recorded(dev_env: WorkflowEnvironment) -> None:
    """lab.expiring `expiring_before` ahead of the deadline; the history is recorded for replay. On the dev
    server (the time-skipping server stops skipping after detached children, which breaks other tests)."""
    port, scripts = MemoryCluster(), ScriptStandIns()
    port.add_warm("warm-cp-1", "cp-1-31", Role.CONTROLPLANE)
    lab = make_lab(duration=timedelta(seconds=6))

    @activity.defn(name="webhook_targets")
    async def no_targets() -> WebhookTargets:  # nobody listens: deliveries complete at once
        return WebhookTargets(urls=[])

    tq = f"events-{uuid.uuid4().hex[:8]}"
    async with Worker(dev_env.client, task_queue=tq, workflows=[LabSessionWorkflow, WebhookDeliveryWorkflow],
                      activities=[*ClusterActivities(port, key_pair=fake_key_pair).all(), *scripts.all(), no_targets]):
        handle = await start_session(dev_env.client, tq, lab, timings=SessionTimings(health_interval=SLOW_HEALTH),
                                     events=SessionEvents(expiring_before=timedelta(seconds=4)))
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.ready
        status = await handle.query(LabSessionWorkflow.status)
        result = await handle.result()
        await record_history(handle, "webhook-events")
        history = await handle.fetch_history()
        starts = [(e.event_time.ToDatetime(), e.start_child_workflow_execution_initiated_event_attributes)
                  for e in history.events if e.HasField("start_child_workflow_execution_initiated_event_attributes")]
        for _, start in starts:  # the deliveries run (and end) while this worker runs
            await dev_env.client.get_workflow_handle(start.workflow_id).result()
    assert result.outcome == Phase.EXPIRED
    ids = [start.workflow_id for _, start in starts]
    session_id = status.session_id
    assert f"webhook/{session_id}.lab.ready" in ids and f"webhook/{session_id}.lab.ended" in ids
    assert f"webhook/{session_id}.lab.graded" in ids
    assert all(start.workflow_type.name == "WebhookDelivery" for _, start in starts)
    assert all(start.parent_close_policy == 2 for _, start in starts)  # ABANDON: deliveries outlive the lab
    (expiring_time,) = [when for when, start in starts if "lab.expiring" in start.workflow_id]
    assert status.deadline is not None
    assert abs((status.deadline.replace(tzinfo=None) - expiring_time).total_seconds() - 4) < 1.5


async def test_a_session_over_the_capacity_cap_sends_lab_queued(stack: Stack, receiver: Receiver) -> None:
    settings = stack.settings.model_copy(update={
        "webhook_urls": receiver.url, "webhook_secret": SecretStr(SECRET), "max_vms": 1,
    })
    stack.settings = stack.labs.settings = settings
    await stack.start_worker()
    first, second = (f"queued-{uuid.uuid4().hex[:6]}" for _ in range(2))
    await stack.labs.start(first, "apiserver-manifest-typo")  # one node: takes the whole cap
    assert (await stack.labs.wait_ready(first, timedelta(seconds=30))).ready
    await stack.labs.start(second, "apiserver-manifest-typo")
    try:
        queued = await receiver.wait_for("lab.queued")
    except TimeoutError:
        raise AssertionError(f"{await stack.labs.status(second)} {receiver.types()}") from None
    assert queued["data"]["student_id"] == second and queued["data"]["position"] == 1
    await stack.labs.end(first)
    await stack.labs.end(second)
    await stack.labs.result(second)
