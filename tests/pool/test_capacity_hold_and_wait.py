"""No hold-and-wait: sessions that hold warm nodes while they queue for cold ones could fill the cap
together, and then none of them would ever be granted. A session that must queue gives its warm nodes
up first (workflows/session/steps.py, `_give_up_warm_nodes`).

Two 2-node labs, cap 2 VMs, 2 warm control planes: each session claims one warm node and needs a cold
worker; the two warm nodes are the whole cap, so without the rule both would wait until `max_queue_wait`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from labrador.settings import PACKAGE_LABS_DIR
from labs.loader import load_catalog
from tests.pool.conftest import CLASSES, CP, WORKER, PoolBed
from tests.pool.test_claims_under_load import fill_pool
from workflows.lab_session import LabSessionWorkflow
from workflows.models import LabSessionInput, Phase
from workflows.pool_models import CapacityLimits

pytestmark = pytest.mark.timeout(60)


async def test_sessions_holding_warm_nodes_do_not_block_each_other_forever(pool_bed: PoolBed) -> None:
    await fill_pool(pool_bed, 2)
    base = load_catalog(PACKAGE_LABS_DIR).labs["kubelet-broken-worker"]
    lab = base.model_copy(update={"nodes": [
        n.model_copy(update={"node_class": CP.name if n.role.value == "controlplane" else WORKER.name})
        for n in base.nodes
    ]})
    handles: list[WorkflowHandle[Any, Any]] = []
    for _ in range(2):
        who = f"st-{uuid.uuid4().hex[:6]}"
        handles.append(await pool_bed.client.start_workflow(
            LabSessionWorkflow.run,
            LabSessionInput(student_id=who, lab=lab, node_classes=dict(CLASSES),
                            capacity=CapacityLimits(max_vms=2, max_memory_bytes=2**40)),
            id=f"lab-session/{who}", task_queue=pool_bed.task_queue,
        ))
    try:
        async with asyncio.timeout(5):
            while True:
                phases = [(await h.query(LabSessionWorkflow.status)).phase for h in handles]
                if Phase.READY in phases:
                    return
                await asyncio.sleep(0.1)
    finally:
        for handle in handles:
            await handle.terminate("test over")
