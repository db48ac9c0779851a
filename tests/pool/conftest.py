"""Pool fixtures: a simulated cluster, two node classes, a published-images file and a worker on the dev server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.cluster_activities import ClusterActivities
from activities.pool_activities import PoolActivities
from cluster.simulated import SimulatedCluster
from cluster.simulated.clock import ManualClock
from labrador.published_images import JsonFilePublishedImages
from labs.models import NodeClass, Role
from workflows.capacity_broker import CapacityBrokerWorkflow
from workflows.pool_refill import PoolRefillWorkflow
from workflows.pool_status import PoolStatusWorkflow


@workflow.defn(sandboxed=False)
class IdleSession:
    """Stands in for a lab session run that holds nodes (the leak collector only asks if it runs)."""

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


CP = NodeClass(name="cp-1-31", role=Role.CONTROLPLANE, image="127.0.0.1:5000/cp:1.31.0", kubernetes_version="1.31.0")
WORKER = NodeClass(name="worker-1-31", role=Role.WORKER, image="127.0.0.1:5000/worker:1.31.0",
                   kubernetes_version="1.31.0")
CLASSES = {CP.name: CP, WORKER.name: WORKER}


@dataclass
class PoolBed:
    client: Client
    task_queue: str
    sim: SimulatedCluster
    clock: ManualClock
    published: JsonFilePublishedImages
    worker: Worker


@pytest.fixture
async def pool_bed(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[PoolBed]:
    clock = ManualClock()
    sim = SimulatedCluster(tmp_path / "sim.sqlite", clock=clock)
    published = JsonFilePublishedImages(tmp_path / "published-images.json")
    task_queue = f"pool-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        dev_env.client,
        task_queue=task_queue,
        workflows=[PoolRefillWorkflow, CapacityBrokerWorkflow, PoolStatusWorkflow, IdleSession],
        activities=[*ClusterActivities(sim).all(), *PoolActivities(sim, lambda: dict(CLASSES), published).all()],
        max_concurrent_activities=100,
    )
    async with worker, sim:
        yield PoolBed(dev_env.client, task_queue, sim, clock, published, worker)
