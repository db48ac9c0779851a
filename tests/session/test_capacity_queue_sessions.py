"""The capacity cap with real lab sessions: dev server, production worker wiring, simulated cluster.

Issue 6: "Capacity cap: sessions queue and report their position, then proceed as capacity frees".
The stand-in session of tests/pool/test_capacity_queue.py covers the broker's rules; here the
LabSessionWorkflow itself queues, reports its position, proceeds and tears down.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

import pytest

from labrador.client import LabClient, NoSession
from workflows.models import TERMINAL_PHASES, LabStatus, Phase
from workflows.pool_models import CapacityState, capacity_broker_id

from .conftest import Stack

pytestmark = pytest.mark.timeout(60)
ONE_NODE_LAB = "apiserver-manifest-typo"


def student() -> str:
    return f"st-{uuid.uuid4().hex[:8]}"


def capped(stack: Stack, max_vms: int) -> LabClient:
    stack.settings = stack.settings.model_copy(update={"max_vms": max_vms})
    stack.labs.settings = stack.settings
    return stack.labs


async def until_status(labs: LabClient, who: str, wanted: tuple[Phase, int | None] | set[Phase]) -> LabStatus:
    seen: LabStatus | None = None
    try:
        async with asyncio.timeout(20):
            while True:
                seen = await labs.status(who)
                if (seen.phase, seen.queue_position) == wanted or (isinstance(wanted, set) and seen.phase in wanted):
                    return seen
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{who}: {seen}, expected {wanted}") from None


async def broker_queue(stack: Stack) -> list[str]:
    handle = stack.env.client.get_workflow_handle(capacity_broker_id(stack.settings.task_queue))
    state: CapacityState = await handle.query("state", result_type=CapacityState)
    return [entry.session_id for entry in state.queue]


async def test_sessions_over_the_cap_queue_with_their_position_and_proceed_as_capacity_frees(stack: Stack) -> None:
    cluster = await stack.start_worker()
    labs = capped(stack, 2)
    first, second, third, fourth = (student() for _ in range(4))
    for who in (first, second):
        await labs.start(who, ONE_NODE_LAB)
    for who in (first, second):
        assert (await labs.wait_ready(who, timedelta(seconds=15))).ready
    started_third = await labs.start(third, ONE_NODE_LAB)
    await until_status(labs, third, (Phase.QUEUED, 1))
    started_fourth = await labs.start(fourth, ONE_NODE_LAB)
    await until_status(labs, fourth, (Phase.QUEUED, 2))
    assert await broker_queue(stack) == [started_third.session_id, started_fourth.session_id]
    assert len((await cluster.inventory()).nodes) == 2  # nobody provisions past the cap
    not_yet = await labs.wait_ready(third, timedelta(seconds=0))
    assert (not_yet.ready, not_yet.phase) == (False, Phase.QUEUED)

    # The first ends: the third proceeds to ready, the fourth moves up.
    await labs.end(first)
    assert (await labs.result(first)).outcome == Phase.ENDED
    ready = await labs.wait_ready(third, timedelta(seconds=15))
    assert ready.ready, ready
    status = await until_status(labs, fourth, (Phase.QUEUED, 1))
    assert status.queue_position == 1
    assert await broker_queue(stack) == [started_fourth.session_id]
    assert len((await cluster.inventory()).nodes) == 2

    # The fourth leaves the queue itself: ended while queued, nothing was created for it.
    await labs.end(fourth)
    fourth_result = await labs.result(fourth)
    assert (fourth_result.outcome, fourth_result.reason) == (Phase.ENDED, "ended by student")
    assert await broker_queue(stack) == []
    for who in (second, third):
        await labs.end(who)
        assert (await labs.result(who)).outcome == Phase.ENDED
    assert (await cluster.inventory()).nodes == []


async def test_a_session_that_waits_longer_than_the_maximum_fails_with_no_capacity(stack: Stack) -> None:
    cluster = await stack.start_worker()
    labs = capped(stack, 1)
    labs.timings = labs.timings.model_copy(update={"max_queue_wait": timedelta(seconds=1)})
    holder, late = student(), student()
    await labs.start(holder, ONE_NODE_LAB)
    assert (await labs.wait_ready(holder, timedelta(seconds=15))).ready
    await labs.start(late, ONE_NODE_LAB)
    result = await labs.result(late)
    assert (result.outcome, result.reason) == (Phase.FAILED, "no capacity")
    assert "maximum queue wait" in result.detail and "position 1" in result.detail
    assert (await labs.status(late)).phase in TERMINAL_PHASES
    assert await broker_queue(stack) == []
    await labs.end(holder)
    await labs.result(holder)
    assert (await cluster.inventory()).nodes == []


async def test_positions_stay_true_when_a_queued_session_vanished_without_leaving_the_queue(stack: Stack) -> None:
    """A queued run that was terminated cannot be told its new place; the ones behind it must still be."""
    await stack.start_worker()
    labs = capped(stack, 1)
    holder, first, vanished, last = (student() for _ in range(4))
    await labs.start(holder, ONE_NODE_LAB)
    assert (await labs.wait_ready(holder, timedelta(seconds=15))).ready
    for position, who in enumerate((first, vanished, last), start=1):
        await labs.start(who, ONE_NODE_LAB)
        await until_status(labs, who, (Phase.QUEUED, position))
    await stack.env.client.get_workflow_handle(f"lab-session/{vanished}").terminate("gone without cleanup")
    await labs.end(holder)
    assert (await labs.wait_ready(first, timedelta(seconds=15))).ready
    started_last = await labs.status(last)
    await until_status(labs, last, (Phase.QUEUED, 1))  # not the stale 2 until the broker's next recheck
    assert await broker_queue(stack) == [started_last.session_id]
    for who in (holder, first, last):
        with contextlib.suppress(NoSession):
            await labs.end(who)
        await labs.result(who)
