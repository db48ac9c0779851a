"""Every path of a lab session through the capacity cap, with the real session workflow and broker.

granted at once, queued then granted, queued then ended, gave its warm nodes up (no hold-and-wait),
no capacity within the maximum wait, refused (bigger than the cap). Each finished session's history
is what tests/session/test_replay.py replays: record with

    LABRADOR_RECORD_HISTORIES=1 python -m pytest tests/pool/test_capacity_paths.py

(`LABRADOR_HISTORY_PREFIX` picks the file names: `capacity-v1-` was recorded on the broker before
ticket numbers, `capacity-` (the default) on today's code; never re-record an existing history.)
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from cluster.simulated.faults import FaultPlan
from labrador.settings import PACKAGE_LABS_DIR
from labs.loader import load_catalog
from labs.models import Lab
from tests.pool.conftest import CLASSES, CP, WORKER, PoolBed
from tests.pool.test_claims_under_load import fill_pool
from tests.session.helpers import SLOW_HEALTH, record_history
from workflows.capacity.models import CapacityState, capacity_broker_id
from workflows.lab_session import LabSessionWorkflow
from workflows.models import EndRequest, LabSessionInput, LabSessionResult, Phase, SessionTimings, WaitReadyRequest
from workflows.pool_models import CapacityLimits
from workflows.session.patches import CLAIM_PREPARES_FLOW, CURRENT_FLOW

pytestmark = pytest.mark.timeout(60)
PREFIX = os.environ.get("LABRADOR_HISTORY_PREFIX", "capacity-")


def lab(name: str) -> Lab:
    base = load_catalog(PACKAGE_LABS_DIR).labs[name]
    return base.model_copy(update={"nodes": [
        n.model_copy(update={"node_class": CP.name if n.role.value == "controlplane" else WORKER.name})
        for n in base.nodes
    ]})


ONE_NODE = "apiserver-manifest-typo"
TWO_NODES = "kubelet-broken-worker"


async def start(
    bed: PoolBed, lab_name: str, max_vms: int, max_wait: timedelta = timedelta(minutes=5),
    overdue: timedelta = timedelta(minutes=15), flow: int = CURRENT_FLOW,
) -> WorkflowHandle[Any, Any]:
    who = f"st-{uuid.uuid4().hex[:6]}"
    return await bed.client.start_workflow(
        LabSessionWorkflow.run,
        LabSessionInput(
            student_id=who, lab=lab(lab_name), node_classes=dict(CLASSES),
            timings=SessionTimings(health_interval=SLOW_HEALTH, max_queue_wait=max_wait, provisioning_overdue=overdue),
            capacity=CapacityLimits(max_vms=max_vms, max_memory_bytes=2**40), flow=flow,
        ),
        id=f"lab-session/{who}", task_queue=bed.task_queue,
    )


async def until(handle: WorkflowHandle[Any, Any], phase: Phase, position: int | None = None) -> None:
    seen = None
    async with asyncio.timeout(20):
        while True:
            status = await handle.query(LabSessionWorkflow.status)
            seen = (status.phase, status.queue_position)
            if seen == (phase, position):
                return
            await asyncio.sleep(0.05)


async def ready(handle: WorkflowHandle[Any, Any]) -> None:
    answer = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=20)))
    assert answer.ready, answer


async def end(handle: WorkflowHandle[Any, Any], name: str | None = None) -> LabSessionResult:
    await handle.signal(LabSessionWorkflow.end, EndRequest())
    result: LabSessionResult = await handle.result()
    if name:
        await record_history(handle, PREFIX + name)
    return result


async def test_granted_at_once(pool_bed: PoolBed) -> None:
    session = await start(pool_bed, ONE_NODE, max_vms=10)
    await ready(session)
    assert (await end(session, "granted-at-once")).outcome == Phase.ENDED
    assert (await pool_bed.sim.inventory()).nodes == []


async def test_queued_then_granted(pool_bed: PoolBed) -> None:
    holder = await start(pool_bed, ONE_NODE, max_vms=1)
    await ready(holder)
    waiting = await start(pool_bed, ONE_NODE, max_vms=1)
    await until(waiting, Phase.QUEUED, 1)
    assert len((await pool_bed.sim.inventory()).nodes) == 1
    await end(holder)
    await ready(waiting)
    assert (await end(waiting, "queued-then-granted")).outcome == Phase.ENDED


async def test_queued_then_ended(pool_bed: PoolBed) -> None:
    holder = await start(pool_bed, ONE_NODE, max_vms=1)
    await ready(holder)
    waiting = await start(pool_bed, ONE_NODE, max_vms=1)
    await until(waiting, Phase.QUEUED, 1)
    result = await end(waiting, "queued-then-ended")
    assert (result.outcome, result.reason) == (Phase.ENDED, "ended by student")
    await end(holder)
    assert (await pool_bed.sim.inventory()).nodes == []


async def test_gave_warm_nodes_up(pool_bed: PoolBed) -> None:
    """Cap 2: a running 1-node lab and one warm node fill it; a 2-node lab claims the warm node, must
    queue for its worker, gives the warm node up, and is granted both nodes once the holder ends."""
    holder = await start(pool_bed, ONE_NODE, max_vms=2)
    await ready(holder)
    await fill_pool(pool_bed, 1)
    waiting = await start(pool_bed, TWO_NODES, max_vms=2)
    await until(waiting, Phase.QUEUED, 1)
    nodes = (await pool_bed.sim.inventory()).nodes
    assert len(nodes) == 1 and nodes[0].session is not None  # only the holder's: the warm one was given up
    await end(holder)
    await ready(waiting)
    status = await waiting.query(LabSessionWorkflow.status)
    assert [n.warm for n in status.nodes] == [False, False]
    assert (await end(waiting, "gave-warm-nodes-up")).outcome == Phase.ENDED


async def test_no_capacity_within_the_maximum_wait(pool_bed: PoolBed) -> None:
    holder = await start(pool_bed, ONE_NODE, max_vms=1)
    await ready(holder)
    late = await start(pool_bed, ONE_NODE, max_vms=1, max_wait=timedelta(seconds=1))
    result: LabSessionResult = await late.result()
    await record_history(late, PREFIX + "no-capacity")
    assert (result.outcome, result.reason) == (Phase.FAILED, "no capacity")
    assert "maximum queue wait" in result.detail
    await end(holder)


async def test_refused_when_bigger_than_the_cap(pool_bed: PoolBed) -> None:
    session = await start(pool_bed, TWO_NODES, max_vms=1)
    result: LabSessionResult = await session.result()
    await record_history(session, PREFIX + "refused")
    assert (result.outcome, result.reason) == (Phase.FAILED, "no capacity")
    assert "more than the platform's cap of 1 VMs" in result.detail
    assert (await pool_bed.sim.inventory()).nodes == []



async def test_an_api_outage_during_the_claim_fails_the_lab_overdue_on_time(pool_bed: PoolBed) -> None:
    pool_bed.sim.faults = FaultPlan(api_error_rate=1.0, api_error_methods=["claim"])
    session = await start(pool_bed, ONE_NODE, max_vms=10, overdue=timedelta(seconds=2))
    began = time.monotonic()
    try:
        async with asyncio.timeout(10):
            result: LabSessionResult = await session.result()
    except TimeoutError:
        raise AssertionError(f"still {await session.query(LabSessionWorkflow.status)}") from None
    finally:
        pool_bed.sim.faults = FaultPlan()
    assert (result.outcome, result.reason) == (Phase.FAILED, "overdue")
    assert "could not claim nodes within 2s" in result.detail
    assert time.monotonic() - began < 8
    assert (await pool_bed.sim.inventory()).nodes == []


async def test_end_during_an_api_outage_in_the_claim_ends_the_lab_at_once(pool_bed: PoolBed) -> None:
    pool_bed.sim.faults = FaultPlan(api_error_rate=1.0, api_error_methods=["claim"])
    session = await start(pool_bed, ONE_NODE, max_vms=10)  # overdue 15 min: only `end` can stop it soon
    await asyncio.sleep(0.5)
    assert (await session.query(LabSessionWorkflow.status)).phase == Phase.CLAIMING
    began = time.monotonic()
    await session.signal(LabSessionWorkflow.end, EndRequest())
    try:
        async with asyncio.timeout(10):
            result: LabSessionResult = await session.result()
    except TimeoutError:
        raise AssertionError(f"still {await session.query(LabSessionWorkflow.status)}") from None
    finally:
        pool_bed.sim.faults = FaultPlan()
    assert (result.outcome, result.reason) == (Phase.ENDED, "ended by student")
    assert time.monotonic() - began < 3


def local_activities_before_ready(events: list[Any]) -> list[str]:
    ready_at = next(i for i, e in enumerate(events)
                    if e.HasField("workflow_execution_update_completed_event_attributes"))
    return [json.loads(e.marker_recorded_event_attributes.details["data"].payloads[0].data)["activity_type"]
            for e in events[:ready_at] if e.HasField("marker_recorded_event_attributes")
            and e.marker_recorded_event_attributes.marker_name == "core_local_activity"]


@pytest.mark.parametrize("flow", [CURRENT_FLOW, CLAIM_PREPARES_FLOW], ids=["claim asks", "flow 2: asks apart"])
async def test_a_cold_start_asks_the_broker_in_the_claims_call(pool_bed: PoolBed, flow: int) -> None:
    session = await start(pool_bed, TWO_NODES, max_vms=10, flow=flow)
    await ready(session)
    calls = local_activities_before_ready(list((await session.fetch_history()).events))
    # claim + ask in one call: one round trip through the worker less (these stand-ins expose apart)
    asked_apart = ["pool_admit_capacity"] if flow == CLAIM_PREPARES_FLOW else []
    assert calls == ["claim_and_prepare_nodes", *asked_apart, "prepare_nodes", "expose_ssh"]
    assert (await end(session)).outcome == Phase.ENDED


async def test_a_session_that_asked_in_its_claim_and_ended_while_queued_leaves_the_queue(pool_bed: PoolBed) -> None:
    holder = await start(pool_bed, ONE_NODE, max_vms=1)
    await ready(holder)
    waiting = await start(pool_bed, ONE_NODE, max_vms=1)
    await until(waiting, Phase.QUEUED, 1)
    await end(waiting)
    broker = pool_bed.client.get_workflow_handle(capacity_broker_id(pool_bed.task_queue))
    deadline = time.monotonic() + 10
    while (await broker.query("state", result_type=CapacityState)).queue_length:
        assert time.monotonic() < deadline, "the ended session is still in the broker's queue"
        await asyncio.sleep(0.1)
    await end(holder)
