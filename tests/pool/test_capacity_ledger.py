"""The capacity broker at scale: its state with 2,000 waiting sessions, continue-as-new in the middle
of a queue, and the cap never exceeded while pool refills and sessions race for the last VMs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cluster.models import SessionRef
from tests.pool.conftest import CP, WORKER, GatedInput, GatedSession, PoolBed
from workflows.capacity.ledger import Ledger
from workflows.capacity.models import (
    CAPACITY_BROKER_WORKFLOW,
    BrokerSettings,
    BrokerState,
    CapacityLimits,
    CapacityRequest,
    CapacityState,
    CapacityUsage,
    capacity_broker_id,
)
from workflows.pool_models import ClassSizing, PoolRefillInput, PoolRefillResult
from workflows.pool_refill import PoolRefillWorkflow

pytestmark = pytest.mark.timeout(90)
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
GIB = 2**30


def ask(ledger: Ledger, i: int, vms: int = 3) -> None:
    session = SessionRef(session_id=f"s-student-{i:05d}-abcdef", workflow_id=f"lab-session/student-{i:05d}",
                         run_id=str(uuid.UUID(int=i)))
    ledger.ask(CapacityRequest(session=session, vms=vms, memory_bytes=vms * GIB, limits=ledger.limits,
                               requested_at=NOW, new_vms=vms, new_memory_bytes=vms * GIB), NOW, notify=False)


def test_two_thousand_waiting_sessions_keep_the_whole_broker_state_small_and_positions_exact() -> None:
    ledger = Ledger(BrokerState(limits=CapacityLimits(max_vms=3, max_memory_bytes=64 * GIB)))
    ledger.apply_usage(CapacityUsage(vms=3, memory_bytes=3 * GIB), set(), NOW)  # full: everybody waits
    for i in range(2000):
        ask(ledger, i)
    assert ledger.decide().granted == []
    size = len(ledger.state().model_dump_json())
    assert size < 128 * 1024, size  # what continue-as-new carries; Temporal warns at 512 KiB
    assert ledger.position("lab-session/student-01999/" + str(uuid.UUID(int=1999))) == 2000
    ledger.release("lab-session/student-00010", str(uuid.UUID(int=10)))  # leaves from the middle
    assert ledger.position("lab-session/student-01999/" + str(uuid.UUID(int=1999))) == 1999
    assert ledger.position("lab-session/student-00009/" + str(uuid.UUID(int=9))) == 10
    again = Ledger(ledger.state())  # continue-as-new: the same queue, in the same order
    assert [e.ticket for e in again.entries(5)] == [e.ticket for e in ledger.entries(5)]
    assert again.queue_length == 1999


def test_a_promise_counts_until_the_cluster_shows_its_nodes_and_a_release_settles_at_the_next_reading() -> None:
    ledger = Ledger(BrokerState(limits=CapacityLimits(max_vms=4, max_memory_bytes=64 * GIB)))
    ledger.apply_usage(CapacityUsage(vms=0, memory_bytes=0), set(), NOW)
    ask(ledger, 1, vms=3)
    assert len(ledger.decide().granted) == 1 and ledger.usage()[0] == 3
    ask(ledger, 2, vms=2)
    assert ledger.decide().granted == [] and ledger.head_blocked()  # 3 promised + 2 > 4
    # The first lab's nodes exist: they count as cluster VMs, not twice.
    ask_input, settling = ledger.usage_request()
    assert ask_input.sessions == ["s-student-00001-abcdef"]
    ledger.apply_usage(CapacityUsage(vms=3, memory_bytes=3 * GIB, sessions={
        "s-student-00001-abcdef": {"vms": 3, "memory_bytes": 3 * GIB}}), settling, NOW)
    assert ledger.promises == {} and ledger.usage()[0] == 3
    # It ends: nothing is freed until a reading shows it (its nodes may still be there).
    ledger.release("lab-session/student-00001", str(uuid.UUID(int=1)))
    assert ledger.decide().granted == []
    _, settling = ledger.usage_request()
    ledger.apply_usage(CapacityUsage(vms=0, memory_bytes=0), settling, NOW)
    assert [w.session_id for w in ledger.decide().granted] == ["s-student-00002-abcdef"]


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {check}")


async def broker_state(bed: PoolBed) -> CapacityState:
    handle = bed.client.get_workflow_handle(capacity_broker_id(bed.task_queue))
    state: CapacityState = await handle.query("state", result_type=CapacityState)
    return state


async def test_continue_as_new_in_the_middle_of_a_queue_keeps_order_positions_and_grants(pool_bed: PoolBed) -> None:
    limits = CapacityLimits(max_vms=1, max_memory_bytes=64 * GIB)
    broker = await pool_bed.client.start_workflow(
        CAPACITY_BROKER_WORKFLOW,
        BrokerState(limits=limits, settings=BrokerSettings(recheck=timedelta(seconds=1), continue_as_new_after=40)),
        id=capacity_broker_id(pool_bed.task_queue), task_queue=pool_bed.task_queue,
    )
    first_run = broker.result_run_id

    async def start(name: str) -> object:
        return await pool_bed.client.start_workflow(
            GatedSession.run, GatedInput(session_id=name, vms=1, limits=limits),
            id=f"lab-session/{name}-{uuid.uuid4().hex[:6]}", task_queue=pool_bed.task_queue,
        )

    sessions = {f"q{i}": await start(f"q{i}") for i in range(6)}

    async def five_waiting() -> bool:
        return (await broker_state(pool_bed)).queue_length == 5

    await eventually(five_waiting)
    before = [e.session_id for e in (await broker_state(pool_bed)).queue]
    holder = next(name for name in sessions if name not in before)

    async def continued() -> bool:  # 40 events of history pass with five sessions waiting
        return (await pool_bed.client.get_workflow_handle(broker.id).describe()).run_id != first_run

    await eventually(continued)
    state = await broker_state(pool_bed)
    assert [e.session_id for e in state.queue] == before
    assert [e.position for e in state.queue] == [1, 2, 3, 4, 5]
    for name in [holder, *before]:
        handle = pool_bed.client.get_workflow_handle(sessions[name].id)  # type: ignore[attr-defined]

        async def running(handle: Any = handle) -> bool:
            return bool((await handle.query(GatedSession.status))[0] == "running")

        await eventually(running)
        assert len((await pool_bed.sim.inventory()).nodes) == 1
        await handle.signal(GatedSession.end)
        assert await handle.result() == "done"
    assert (await pool_bed.sim.inventory()).nodes == []


async def test_the_cap_holds_at_every_step_while_refills_and_sessions_race(pool_bed: PoolBed) -> None:
    cap = 6
    limits = CapacityLimits(max_vms=cap, max_memory_bytes=64 * GIB)
    seen: list[int] = []
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            seen.append(len((await pool_bed.sim.inventory()).nodes))
            await asyncio.sleep(0.01)

    async def refill(round_: int) -> PoolRefillResult:
        return await pool_bed.client.execute_workflow(
            PoolRefillWorkflow.run,
            # Two free nodes at most: the pool never evicts, so a bigger one could starve the sessions.
            PoolRefillInput(sizing={CP.name: ClassSizing(min_size=1, max_size=1),
                                    WORKER.name: ClassSizing(min_size=1, max_size=1)},
                            default_sizing=ClassSizing(min_size=0, max_size=0), max_vms=cap, parallelism=10,
                            collect_leaks=False),
            id=f"refill-{round_}-{uuid.uuid4().hex[:6]}", task_queue=pool_bed.task_queue,
            result_type=PoolRefillResult,
        )

    async def session(i: int) -> str:
        handle = await pool_bed.client.start_workflow(
            GatedSession.run, GatedInput(session_id=f"race{i}", vms=1 + i % 3, limits=limits),
            id=f"lab-session/race{i}-{uuid.uuid4().hex[:6]}", task_queue=pool_bed.task_queue,
        )

        async def running() -> bool:
            return bool((await handle.query(GatedSession.status))[0] == "running")

        await eventually(running, 60)
        await asyncio.sleep(0.2)
        await handle.signal(GatedSession.end)
        result: str = await handle.result()
        return result

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(session(i) for i in range(12)), *(refill(r) for r in range(4)))
    finally:
        stop.set()
        await watcher
    assert results[:12] == ["done"] * 12
    assert seen and max(seen) <= cap, f"{max(seen)} VMs at once under a cap of {cap}"
