"""`labrador schedules apply` on the dev server: the refill schedule exists, fires, survives re-apply;
drain/resume edit the argument every refill reads; pause/resume the schedule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.client import ScheduleActionStartWorkflow, ScheduleIntervalSpec, ScheduleOverlapPolicy

from labrador import schedules
from labrador.settings import Settings
from tests.pool.conftest import CP, WORKER, PoolBed
from workflows.pool_models import POOL_REFILL_SCHEDULE_ID, ClassSizing

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def settings(pool_bed: PoolBed) -> AsyncIterator[Settings]:
    yield Settings(task_queue=pool_bed.task_queue, max_vms=40, max_memory="64Gi")
    try:
        await pool_bed.client.get_schedule_handle(POOL_REFILL_SCHEDULE_ID).delete()
    except Exception:
        pass


async def test_schedule_is_created_idempotently_and_fires(pool_bed: PoolBed, settings: Settings) -> None:
    first = await schedules.apply_schedules(pool_bed.client, settings, refill_every=timedelta(seconds=1))
    assert (first[0].schedule_id, first[0].outcome) == (POOL_REFILL_SCHEDULE_ID, "created")
    # The image pipeline's rebuild schedules are applied by the same call (created, or updated if present).
    assert {a.outcome for a in first[1:]} <= {"created", "updated"}

    handle = pool_bed.client.get_schedule_handle(POOL_REFILL_SCHEDULE_ID)
    description = await handle.describe()
    assert description.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
    assert description.schedule.spec.intervals == [ScheduleIntervalSpec(every=timedelta(seconds=1))]
    action = description.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow) and action.workflow == "PoolRefillWorkflow"

    result = None
    for _ in range(100):
        result = await schedules.last_refill_result(pool_bed.client)
        if result is not None:
            break
        await asyncio.sleep(0.1)
    assert result is not None, "the schedule never completed a refill"
    stored = await schedules.current_refill_input(pool_bed.client)
    assert stored is not None and stored.max_vms == 40 and stored.max_memory_bytes == 64 * 2**30

    again = await schedules.apply_schedules(pool_bed.client, settings, refill_every=timedelta(seconds=1))
    assert {a.outcome for a in again} == {"updated"} and len(again) == len(first)
    listed = [s.id async for s in await pool_bed.client.list_schedules()]
    assert listed.count(POOL_REFILL_SCHEDULE_ID) == 1


async def test_drain_resume_and_pause_edit_what_every_refill_reads(pool_bed: PoolBed, settings: Settings) -> None:
    await schedules.apply_schedules(pool_bed.client, settings, refill_every=timedelta(hours=1))
    await schedules.set_paused(pool_bed.client, True, "test")
    # Operators size the pool in the schedule; keep 2 of each class warm.
    await schedules.edit_refill_input(pool_bed.client, lambda i: i.model_copy(update={"sizing": {
        CP.name: ClassSizing(min_size=2, max_size=2), WORKER.name: ClassSizing(min_size=2, max_size=2)}}))
    filled = await schedules.trigger_refill_and_wait(pool_bed.client)
    assert filled.classes[WORKER.name].free == 2

    drained = await schedules.edit_refill_input(
        pool_bed.client, lambda i: i.model_copy(update={"drained": sorted({*i.drained, WORKER.name})})
    )
    assert drained.drained == [WORKER.name]
    result = await schedules.trigger_refill_and_wait(pool_bed.client)
    assert result.classes[WORKER.name].deleted_drained == 2
    assert result.classes[CP.name].free == 2

    # Re-applying keeps the drained set, the operator's sizing and the pause.
    await schedules.apply_schedules(pool_bed.client, settings, refill_every=timedelta(hours=1))
    stored = await schedules.current_refill_input(pool_bed.client)
    assert stored is not None and stored.drained == [WORKER.name] and stored.sizing[CP.name].max_size == 2
    assert await schedules.is_paused(pool_bed.client) is True

    await schedules.edit_refill_input(pool_bed.client, lambda i: i.model_copy(update={"drained": []}))
    refilled = await schedules.trigger_refill_and_wait(pool_bed.client)
    assert refilled.classes[WORKER.name].created == 2
    await schedules.set_paused(pool_bed.client, False, "test")
    assert await schedules.is_paused(pool_bed.client) is False
