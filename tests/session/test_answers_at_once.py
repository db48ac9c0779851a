"""Queries and validators answer from workflow state at once, whatever the activities are doing.

A teardown stuck retrying (the cluster API fails every release) must not make `lab status` or a
refused `extend` wait: the retrying calls are regular activities, which leave the workflow free.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import pytest

from cluster.simulated.faults import FaultPlan
from labrador.client import LabError
from workflows.models import LabSessionResult, Phase

from .conftest import Stack

pytestmark = pytest.mark.timeout(90)


async def test_status_and_extend_answer_at_once_while_teardown_is_stuck_retrying(stack: Stack) -> None:
    cluster = await stack.start_worker()
    who = f"st-{uuid.uuid4().hex[:8]}"
    await stack.labs.start(who, "sandbox")
    ready = await stack.labs.wait_ready(who, timedelta(seconds=15))
    assert ready.ready
    cluster.faults = FaultPlan(api_error_rate=1.0, api_error_methods=["release"])  # teardown cannot finish
    await stack.labs.end(who)
    async with asyncio.timeout(20):
        while True:
            if (await stack.labs.status(who)).phase == Phase.TEARING_DOWN:
                break
            await asyncio.sleep(0.05)
    await asyncio.sleep(3)  # several release attempts have failed and backed off by now

    slowest = 0.0
    for _ in range(5):
        began = time.monotonic()
        async with asyncio.timeout(10):
            status = await stack.labs.status(who)
        slowest = max(slowest, time.monotonic() - began)
        assert status.phase == Phase.TEARING_DOWN
        began = time.monotonic()
        with pytest.raises(LabError, match="not running"):
            async with asyncio.timeout(10):
                await stack.labs.extend(who)
        slowest = max(slowest, time.monotonic() - began)
        await asyncio.sleep(0.3)
    assert slowest < 1.0, f"a query or validator took {slowest:.2f}s during the stuck teardown"

    cluster.faults = FaultPlan()  # the API is back: teardown finishes
    result: LabSessionResult = await stack.labs.result(who)
    assert result.outcome == Phase.ENDED and result.teardown_problems == []
    assert (await cluster.inventory()).nodes == []
