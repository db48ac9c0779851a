"""Temporal Schedules of labrador: create or update them idempotently (`labrador schedules apply`).

- `labrador-pool-refill`: PoolRefillWorkflow every minute (default), overlap SKIP (a slow refill is
  never stacked). Its argument (PoolRefillInput) is built from settings and also holds the *drained*
  classes: `apply` keeps the drained set it finds, `pool drain/resume CLASS` edit it (see docs/pool.md).
- The image rebuild schedules of the image pipeline (`image_schedules()`, below).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from labrador.settings import Settings
from labs.models import quantity_bytes
from workflows.pool_models import (
    POOL_REFILL_SCHEDULE_ID,
    POOL_REFILL_WORKFLOW_ID,
    PoolRefillInput,
    PoolRefillMemory,
    PoolRefillResult,
)

DEFAULT_REFILL_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class AppliedSchedule:
    schedule_id: str
    outcome: str  # "created" | "updated"
    description: str


def refill_input_from_settings(
    settings: Settings, *, drained: Iterable[str] = (), refill_every: timedelta = DEFAULT_REFILL_EVERY
) -> PoolRefillInput:
    """The refill's argument: caps from settings; the drained set carried over by the caller.

    `refill_interval` is the schedule's own interval: the sizing policy's lead time depends on it.
    """
    return PoolRefillInput(
        max_vms=settings.max_vms,
        max_memory_bytes=quantity_bytes(settings.max_memory),
        drained=sorted(set(drained)),
        refill_interval=refill_every,
    )


def refill_schedule(settings: Settings, refill_input: PoolRefillInput, every: timedelta) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            "PoolRefillWorkflow",
            refill_input,
            id=POOL_REFILL_WORKFLOW_ID,
            task_queue=settings.task_queue,
            execution_timeout=timedelta(minutes=30),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(minutes=1)),
        state=ScheduleState(note="warm pool refill (labrador schedules apply)"),
    )


def image_schedules(settings: Settings) -> list[tuple[str, Schedule]]:
    """`(schedule ID, Schedule)` pairs of the image rebuilds (image_pipeline.schedules), applied by the
    same create-or-update code as the refill."""
    from image_pipeline.schedules import image_rebuild_schedules

    return list(image_rebuild_schedules(settings))


async def current_refill_input(client: Client) -> PoolRefillInput | None:
    """The refill argument stored in the schedule (None when the schedule does not exist)."""
    description = await _describe_refill_schedule(client)
    if description is None:
        return None
    action = description.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    return await _decode_refill_input(client, action)


async def _decode_refill_input(client: Client, action: ScheduleActionStartWorkflow) -> PoolRefillInput:
    if not action.args:
        return PoolRefillInput()
    first = action.args[0]
    if isinstance(first, PoolRefillInput):
        return first
    values = await client.data_converter.decode([first], [PoolRefillInput])
    return values[0]


async def _create_or_update(client: Client, schedule_id: str, schedule: Schedule,
                            keep: Callable[[Schedule, Schedule], Schedule] | None = None) -> str:
    try:
        await client.create_schedule(schedule_id, schedule)
        return "created"
    except ScheduleAlreadyRunningError:
        pass

    async def updater(current: ScheduleUpdateInput) -> ScheduleUpdate:
        wanted = keep(current.description.schedule, schedule) if keep else schedule
        # Keep the operator's pause (pool pause) across re-applies.
        wanted.state = current.description.schedule.state
        return ScheduleUpdate(schedule=wanted)

    await client.get_schedule_handle(schedule_id).update(updater)
    return "updated"


async def apply_schedules(
    client: Client, settings: Settings, *, refill_every: timedelta = DEFAULT_REFILL_EVERY
) -> list[AppliedSchedule]:
    """Create or update every schedule. Re-running changes nothing but what settings changed."""
    existing = await current_refill_input(client)
    drained = existing.drained if existing else []
    refill_input = refill_input_from_settings(settings, drained=drained, refill_every=refill_every)
    if existing is not None:  # keep the overrides the operator set in the schedule; caps and interval follow
        refill_input = existing.model_copy(
            update={"max_vms": refill_input.max_vms, "max_memory_bytes": refill_input.max_memory_bytes,
                    "refill_interval": refill_every}
        )
    applied = [
        AppliedSchedule(
            POOL_REFILL_SCHEDULE_ID,
            await _create_or_update(
                client, POOL_REFILL_SCHEDULE_ID, refill_schedule(settings, refill_input, refill_every)
            ),
            f"PoolRefillWorkflow every {refill_every}, overlap SKIP, drained={refill_input.drained}"
            + (f", size overrides={sorted(refill_input.sizing)}" if refill_input.sizing else ""),
        )
    ]
    for schedule_id, schedule in image_schedules(settings):
        applied.append(AppliedSchedule(schedule_id, await _create_or_update(client, schedule_id, schedule),
                                       "image rebuild"))
    return applied


# --- drain / resume / pause (labrador pool ...) ----------------------------------------------------


class ScheduleMissing(LookupError):
    pass


async def edit_refill_input(
    client: Client, edit: Callable[[PoolRefillInput], PoolRefillInput]
) -> PoolRefillInput:
    """Change the refill argument stored in the schedule (atomically: the update reads the current one)."""
    handle = client.get_schedule_handle(POOL_REFILL_SCHEDULE_ID)
    result: list[PoolRefillInput] = []

    async def updater(current: ScheduleUpdateInput) -> ScheduleUpdate:
        schedule = current.description.schedule
        action = schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        new_input = edit(await _decode_refill_input(client, action))
        action.args = [new_input]
        result.append(new_input)
        return ScheduleUpdate(schedule=schedule)

    try:
        await handle.update(updater)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleMissing("the pool refill schedule does not exist: run `labrador schedules apply`") from None
        raise
    return result[-1]


async def set_paused(client: Client, paused: bool, note: str) -> None:
    """Pause or unpause through the same read-modify-write update as the argument edits, so a pause
    and a concurrent drain/resume edit can never undo each other."""
    handle = client.get_schedule_handle(POOL_REFILL_SCHEDULE_ID)

    async def updater(current: ScheduleUpdateInput) -> ScheduleUpdate:
        schedule = current.description.schedule
        schedule.state.paused = paused
        schedule.state.note = note
        return ScheduleUpdate(schedule=schedule)

    try:
        await handle.update(updater)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise ScheduleMissing("the pool refill schedule does not exist: run `labrador schedules apply`") from None
        raise


async def is_paused(client: Client) -> bool | None:
    description = await _describe_refill_schedule(client)
    return None if description is None else description.schedule.state.paused


async def _describe_refill_schedule(client: Client) -> ScheduleDescription | None:
    """The refill schedule's description, None when it does not exist."""
    try:
        return await client.get_schedule_handle(POOL_REFILL_SCHEDULE_ID).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def last_refill_result(client: Client) -> PoolRefillResult | None:
    """The result of the most recent completed scheduled refill (targets, leaks), if any."""
    try:
        description = await client.get_schedule_handle(POOL_REFILL_SCHEDULE_ID).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    for action in reversed(description.info.recent_actions):
        workflow_id = getattr(action.action, "workflow_id", None)
        if not workflow_id:
            continue
        handle = client.get_workflow_handle(workflow_id, result_type=PoolRefillResult)
        try:
            if (await handle.describe()).close_time is None:
                continue
            return await handle.result()
        except Exception:  # failed or terminated run: look further back
            continue
    return None


async def trigger_refill_and_wait(client: Client, wait: timedelta = timedelta(minutes=2)) -> PoolRefillResult:
    """Run one refill now with the schedule's current argument and return its result."""
    return await wait_for_refill(await start_refill_now(client, wait), wait)


async def start_refill_now(client: Client, wait: timedelta = timedelta(minutes=2)) -> WorkflowHandle[Any, Any]:
    """Start one refill now with the schedule's current argument (the caller waits: `wait_for_refill`).

    Started directly (ID `labrador-pool-refill-now-<uuid>`) rather than with a schedule trigger: the
    scheduler names runs by the second, so two triggers within one second collide and one is lost.
    A run overlapping a scheduled one is safe (every step is idempotent; a surplus is trimmed next run).
    """
    description = await client.get_schedule_handle(POOL_REFILL_SCHEDULE_ID).describe()
    action = description.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    refill_input = await _decode_refill_input(client, action)
    last = await last_refill_result(client)
    if last is not None:  # keep the demand estimate, or this run would shrink every class to its minimum
        refill_input = refill_input.model_copy(
            update={"previous": PoolRefillMemory(demand=last.demand, claimed_node_ids=last.claimed_node_ids)}
        )
    return await client.start_workflow(
        "PoolRefillWorkflow", refill_input, id=f"{POOL_REFILL_WORKFLOW_ID}-now-{uuid.uuid4().hex[:12]}",
        task_queue=action.task_queue, execution_timeout=wait, result_type=PoolRefillResult,
    )


async def wait_for_refill(handle: WorkflowHandle[Any, Any], wait: timedelta = timedelta(minutes=2)) -> PoolRefillResult:
    try:
        result: PoolRefillResult = await asyncio.wait_for(handle.result(), wait.total_seconds())
    except TimeoutError:
        raise TimeoutError(f"the refill did not finish within {wait} (is a worker on the task queue?)") from None
    return result
