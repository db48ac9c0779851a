"""The capacity broker: FIFO queue under the global cap, positions, grants as capacity frees, max wait,
leases of terminated sessions dropped, and the pool refill yielding to queued sessions."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio.client import WorkflowHandle

from tests.pool.conftest import CP, WORKER, GatedInput, GatedSession, PoolBed
from workflows.pool_models import CapacityLimits, ClassSizing, PoolRefillInput, PoolRefillResult
from workflows.pool_refill import PoolRefillWorkflow

pytestmark = pytest.mark.timeout(60)
LIMITS = CapacityLimits(max_vms=4, max_memory_bytes=64 * 2**30)


async def start(bed: PoolBed, name: str, vms: int, max_wait: timedelta = timedelta(minutes=5)) -> WorkflowHandle:
    return await bed.client.start_workflow(
        GatedSession.run, GatedInput(session_id=name, vms=vms, limits=LIMITS, max_wait=max_wait),
        id=f"lab-session/{name}-{uuid.uuid4().hex[:6]}", task_queue=bed.task_queue,
    )


async def until(handle: WorkflowHandle, expected: tuple[str, int | None]) -> None:
    seen = None
    for _ in range(200):
        seen = tuple(await handle.query(GatedSession.status))
        if seen == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id}: status {seen}, expected {expected}")


async def test_sessions_queue_in_fifo_order_and_proceed_as_capacity_frees(pool_bed: PoolBed) -> None:
    a = await start(pool_bed, "a", 2)
    b = await start(pool_bed, "b", 1)
    await until(a, ("running", None))
    await until(b, ("running", None))
    c = await start(pool_bed, "c", 2)
    await until(c, ("queued", 1))
    d = await start(pool_bed, "d", 1)  # would fit in the 1 VM left, but must not overtake c
    await until(d, ("queued", 2))

    # While sessions wait, the pool does not take the VM left for itself.
    refill = await pool_bed.client.execute_workflow(
        PoolRefillWorkflow.run,
        PoolRefillInput(sizing={WORKER.name: ClassSizing(min_size=1, max_size=1)},
                        default_sizing=ClassSizing(min_size=0, max_size=0), max_vms=LIMITS.max_vms),
        id=f"refill-{uuid.uuid4().hex[:6]}", task_queue=pool_bed.task_queue, result_type=PoolRefillResult,
    )
    assert refill.classes[WORKER.name].created == 0
    assert refill.capped_reason and "queued" in refill.capped_reason

    # b ends: c fits now; d is next.
    await b.signal(GatedSession.end)
    assert await b.result() == "done"
    await until(c, ("running", None))
    await until(d, ("queued", 1))

    # a ends: d proceeds. Never more than the cap at once.
    await a.signal(GatedSession.end)
    await until(d, ("running", None))
    assert len((await pool_bed.sim.inventory()).nodes) == 3
    for handle in (c, d):
        await handle.signal(GatedSession.end)
        assert await handle.result() == "done"


async def test_max_wait_ends_the_session_with_a_clear_reason(pool_bed: PoolBed) -> None:
    holder = await start(pool_bed, "holder", 4)
    await until(holder, ("running", None))
    late = await start(pool_bed, "late", 1, max_wait=timedelta(seconds=1))
    assert (await late.result()).startswith("refused: no capacity within the maximum queue wait")
    too_big = await start(pool_bed, "too-big", 5)
    result = await too_big.result()
    assert "more than the platform's cap of 4 VMs" in result
    await holder.signal(GatedSession.end)
    assert await holder.result() == "done"


async def test_lease_of_a_terminated_session_is_dropped(pool_bed: PoolBed) -> None:
    crashed = await start(pool_bed, "crashed", 4)
    await until(crashed, ("running", None))
    waiting = await start(pool_bed, "waiting", 2)
    await until(waiting, ("queued", 1))
    await crashed.terminate("crashed without cleanup")
    # Its nodes are still there: the refill collects them, then the broker lets the next one in.
    await pool_bed.client.execute_workflow(
        PoolRefillWorkflow.run, PoolRefillInput(default_sizing=ClassSizing(min_size=0, max_size=0)),
        id=f"refill-{uuid.uuid4().hex[:6]}", task_queue=pool_bed.task_queue, result_type=PoolRefillResult,
    )
    await until(waiting, ("running", None))
    await waiting.signal(GatedSession.end)
    assert await waiting.result() == "done"
    assert CP.name  # the classes are shared with the refill tests
