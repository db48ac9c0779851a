"""Nothing that crosses Temporal grows with the cluster: a simulated cluster holding 2,000 labs, real
lab sessions starting on it through the capacity cap (some granted, some queued: no-op scripts, zero
boot), a pool refill (with its leak collection) and a pool status; every event of every history (the
sessions, the capacity broker's runs, the refill, the status) stays under 256 KiB.

The 2,000 labs' nodes are put into the cluster directly (claimed, for sessions whose runs do not
exist): 2,000 full sessions through one dev server take minutes on 2 cores, and what grows with the
cluster is what the workflows read of it. An event's size bounds each payload in it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from cluster.models import NodeSpec, SessionRef
from labrador.settings import PACKAGE_LABS_DIR
from labs.loader import load_catalog
from tests.pool.conftest import CLASSES, CP, PoolBed
from workflows.capacity.models import CapacityLimits, CapacityState, capacity_broker_id
from workflows.lab_session import LabSessionWorkflow
from workflows.models import LabSessionInput, SessionTimings
from workflows.pool_models import PoolRefillInput, PoolRefillResult, PoolStatus, PoolStatusInput
from workflows.pool_refill import PoolRefillWorkflow
from workflows.pool_status import PoolStatusWorkflow

pytestmark = pytest.mark.timeout(120)
LABS = 2000
SESSIONS = 40
GRANTED = 25
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
    for i in range(LABS):
        session = SessionRef(session_id=f"held-{i}", workflow_id=f"lab-session/held-{i}",
                             run_id=str(uuid.UUID(int=i + 1)))
        await pool_bed.sim.provision(NodeSpec(
            node_id=f"held-{i}-cp", node_class=CP.name, role=CP.role, image=CP.image, kubernetes_version="1.31.0",
            cpu_cores=1, memory=CP.effective_memory, disk=CP.disk, session=session,
        ))
    base = load_catalog(PACKAGE_LABS_DIR).labs["apiserver-manifest-typo"]  # one node
    lab = base.model_copy(update={"nodes": [n.model_copy(update={"node_class": CP.name}) for n in base.nodes]})
    timings = SessionTimings(health_interval=timedelta(hours=1), unclaimed_timeout=timedelta(hours=2))
    limits = CapacityLimits(max_vms=LABS + GRANTED, max_memory_bytes=2**50)
    run = uuid.uuid4().hex[:6]
    ids = [f"lab-session/scale-{run}-{i}" for i in range(SESSIONS)]
    semaphore = asyncio.Semaphore(20)

    async def start(workflow_id: str) -> None:
        async with semaphore:
            await client.start_workflow(
                LabSessionWorkflow.run,
                LabSessionInput(student_id=workflow_id.split("/")[1], lab=lab, node_classes=dict(CLASSES),
                                timings=timings, capacity=limits),
                id=workflow_id, task_queue=pool_bed.task_queue,
            )

    broker = capacity_broker_id(pool_bed.task_queue)
    try:
        await asyncio.gather(*(start(i) for i in ids))
        for _ in range(240):
            try:
                state = await client.get_workflow_handle(broker).query("state", result_type=CapacityState)
            except RPCError as error:  # no session has asked yet: the first one starts the broker
                if error.status != RPCStatusCode.NOT_FOUND:
                    raise
                await asyncio.sleep(0.25)
                continue
            vms = (await pool_bed.sim.inventory_summary()).vms
            if state.queue_length == SESSIONS - GRANTED and vms == LABS + GRANTED:
                break
            await asyncio.sleep(0.25)
        assert state.queue_length == SESSIONS - GRANTED
        assert (await pool_bed.sim.inventory_summary()).vms == LABS + GRANTED

        refill = f"refill-{run}"
        refilled = await client.execute_workflow(
            PoolRefillWorkflow.run, PoolRefillInput(max_vms=LABS + GRANTED, max_memory_bytes=2**50), id=refill,
            task_queue=pool_bed.task_queue, result_type=PoolRefillResult,
        )
        assert refilled.leaks.sessions == 100  # the held labs have no run: collected a page at a time
        status = f"status-{run}"
        result = await client.execute_workflow(
            PoolStatusWorkflow.run, PoolStatusInput(), id=status, task_queue=pool_bed.task_queue,
            result_type=PoolStatus,
        )
        # 100 VMs were freed: the queued sessions may be getting them meanwhile.
        assert LABS + GRANTED - 100 <= result.total_vms <= LABS + SESSIONS - 100

        checked: dict[str, tuple[int, str]] = {}
        async for execution in client.list_workflows(f"WorkflowId = '{broker}'"):
            checked[f"broker run {execution.run_id}"] = await largest_event(client, broker, execution.run_id)
        checked["refill"] = await largest_event(client, refill)
        checked["pool status"] = await largest_event(client, status)
        for workflow_id in ids:
            checked[workflow_id] = await largest_event(client, workflow_id)
        worst = max(checked.items(), key=lambda item: item[1][0])
        assert len(checked) >= SESSIONS + 3
        assert worst[1][0] < LIMIT, f"{worst[0]}: a {worst[1][1]} event of {worst[1][0]} bytes"
    finally:
        for workflow_id in ids:
            with contextlib.suppress(Exception):
                await client.get_workflow_handle(workflow_id).terminate("test over")
