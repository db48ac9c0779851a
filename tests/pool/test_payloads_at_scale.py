"""Nothing that crosses Temporal grows with the cluster: 2,000 running labs on the simulated cluster
(no-op scripts, zero boot), then a pool refill and a pool status; every event of every history
(the sessions, the capacity broker's runs, the refill, the status) stays under 256 KiB.

An event's size bounds the size of each payload in it, so this is the stricter check."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from cluster.models import NodeState
from labrador.settings import PACKAGE_LABS_DIR
from labs.loader import load_catalog
from tests.pool.conftest import CLASSES, CP, PoolBed
from workflows.capacity.models import CapacityLimits, capacity_broker_id
from workflows.lab_session import LabSessionWorkflow
from workflows.models import LabSessionInput, SessionTimings
from workflows.pool_models import PoolRefillInput, PoolRefillResult, PoolStatus, PoolStatusInput
from workflows.pool_refill import PoolRefillWorkflow
from workflows.pool_status import PoolStatusWorkflow

pytestmark = pytest.mark.timeout(400)
LABS = 2000
LIMIT = 256 * 1024


async def largest_event(client: Client, workflow_id: str, run_id: str | None = None) -> tuple[int, str]:
    largest, what = 0, ""
    async for event in client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history_events():
        size = event.ByteSize()
        if size > largest:
            largest, what = size, EventType.Name(event.event_type)
    return largest, what


async def test_two_thousand_running_labs_keep_every_payload_small(pool_bed: PoolBed) -> None:
    client = pool_bed.client
    base = load_catalog(PACKAGE_LABS_DIR).labs["apiserver-manifest-typo"]  # one node: 2,000 labs, 2,000 VMs
    lab = base.model_copy(update={"nodes": [n.model_copy(update={"node_class": CP.name}) for n in base.nodes]})
    timings = SessionTimings(health_interval=timedelta(hours=1), unclaimed_timeout=timedelta(hours=2))
    limits = CapacityLimits(max_vms=100_000, max_memory_bytes=2**50)
    run = uuid.uuid4().hex[:6]
    ids = [f"lab-session/scale-{run}-{i}" for i in range(LABS)]
    semaphore = asyncio.Semaphore(100)

    async def start(workflow_id: str) -> None:
        async with semaphore:
            await client.start_workflow(
                LabSessionWorkflow.run,
                LabSessionInput(student_id=workflow_id.split("/")[1], lab=lab, node_classes=dict(CLASSES),
                                timings=timings, capacity=limits),
                id=workflow_id, task_queue=pool_bed.task_queue,
            )

    try:
        await asyncio.gather(*(start(i) for i in ids))
        for _ in range(600):
            if (await pool_bed.sim.inventory_summary()).count(state=NodeState.CLAIMED) >= LABS:
                break
            await asyncio.sleep(0.5)
        assert (await pool_bed.sim.inventory_summary()).count(state=NodeState.CLAIMED) == LABS

        refill = f"refill-{run}"
        await client.execute_workflow(
            PoolRefillWorkflow.run, PoolRefillInput(max_vms=100_000, max_memory_bytes=2**50), id=refill,
            task_queue=pool_bed.task_queue, result_type=PoolRefillResult,
        )
        status = f"status-{run}"
        result = await client.execute_workflow(
            PoolStatusWorkflow.run, PoolStatusInput(), id=status, task_queue=pool_bed.task_queue,
            result_type=PoolStatus,
        )
        assert result.total_vms == LABS

        checked: dict[str, tuple[int, str]] = {}
        broker = capacity_broker_id(pool_bed.task_queue)
        async for execution in client.list_workflows(f"WorkflowId = '{broker}'"):
            checked[f"broker run {execution.run_id}"] = await largest_event(client, broker, execution.run_id)
        checked["refill"] = await largest_event(client, refill)
        checked["pool status"] = await largest_event(client, status)

        async def session(workflow_id: str) -> None:
            async with semaphore:
                checked[workflow_id] = await largest_event(client, workflow_id)

        await asyncio.gather(*(session(i) for i in ids))
        worst = max(checked.items(), key=lambda item: item[1][0])
        assert len(checked) >= LABS + 3
        assert worst[1][0] < LIMIT, f"{worst[0]}: a {worst[1][1]} event of {worst[1][0]} bytes"
    finally:
        async def terminate(workflow_id: str) -> Any:
            async with semaphore:
                try:
                    await client.get_workflow_handle(workflow_id).terminate("test over")
                except Exception:
                    pass

        await asyncio.gather(*(terminate(i) for i in ids))
