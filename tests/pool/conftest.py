"""Pool fixtures: a simulated cluster, two node classes, a published-images file and a worker on the dev server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.cluster_activities import ClusterActivities
from activities.pool_activities import PoolActivities
from cluster.models import ClaimRequest, ClaimResult, ClaimWant, NodeSpec, SessionRef
from cluster.published_images import JsonFilePublishedImages
from cluster.simulated import SimulatedCluster
from cluster.simulated.clock import ManualClock
from labs.models import NodeClass, Role
from tests.session.fakes import fake_key_pair
from workflows.capacity.broker import CapacityBrokerWorkflow
from workflows.capacity.gate import CapacityGate, CapacityRefused
from workflows.lab_session import LabSessionWorkflow
from workflows.models import (
    ActivityName,
    CheckReport,
    ChecksInput,
    ProvisionInput,
    SessionCredentials,
    SessionIdInput,
    SetupInput,
    SetupResult,
    TeardownInput,
)
from workflows.pool_models import CapacityLimits
from workflows.pool_refill import PoolRefillWorkflow
from workflows.pool_status import PoolStatusWorkflow


@workflow.defn(sandboxed=False)
class IdleSession:
    """Stands in for a lab session run that holds nodes (the leak collector only asks if it runs)."""

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


class GatedInput(BaseModel):
    session_id: str
    vms: int
    limits: CapacityLimits
    max_wait: timedelta = timedelta(minutes=5)


@workflow.defn(sandboxed=False)
class GatedSession:
    """A session reduced to its capacity story: ask the broker, cold-provision, hold until ended, release."""

    def __init__(self) -> None:
        self.gate = CapacityGate()
        self.ended = False
        self.phase = "starting"

    @workflow.run
    async def run(self, input: GatedInput) -> str:
        info = workflow.info()
        ref = SessionRef(session_id=input.session_id, workflow_id=info.workflow_id, run_id=info.run_id)

        def queued(position: int) -> None:
            self.phase = "queued"

        try:
            await self.gate.acquire(ref, input.vms, input.vms * WORKER.memory_bytes, input.limits, input.max_wait,
                                    on_queued=queued)
        except CapacityRefused as refused:
            return f"refused: {refused}"
        for index in range(input.vms):
            spec = NodeSpec(
                node_id=f"{input.session_id}-n{index}", node_class=WORKER.name, role=WORKER.role,
                image=WORKER.image, kubernetes_version="1.31.0", cpu_cores=1, memory=WORKER.effective_memory,
                disk=WORKER.disk, session=ref,
            )
            await workflow.execute_activity(
                ActivityName.PROVISION_NODE, ProvisionInput(spec=spec), start_to_close_timeout=timedelta(seconds=10)
            )
        self.phase = "running"
        await workflow.wait_condition(lambda: self.ended)
        await workflow.execute_activity(
            ActivityName.RELEASE_SESSION, SessionIdInput(session_id=input.session_id),
            start_to_close_timeout=timedelta(seconds=10),
        )
        await self.gate.release(ref)
        return "done"

    @workflow.signal
    def end(self) -> None:
        self.ended = True

    @workflow.query
    def status(self) -> tuple[str, int | None]:
        return self.phase, self.gate.position


@workflow.defn(sandboxed=False)
class ClaimingSession:
    """The claim step of a lab session: warm nodes first (CLAIM_NODES), then cold-provision the rest."""

    @workflow.run
    async def run(self, wanted: int) -> list[tuple[str, bool]]:
        info = workflow.info()
        ref = SessionRef(session_id=f"s-{info.workflow_id.split('/')[-1]}", workflow_id=info.workflow_id,
                         run_id=info.run_id)
        claim = await workflow.execute_activity(
            ActivityName.CLAIM_NODES, ClaimRequest(session=ref, wants=[ClaimWant(node_class=CP.name, count=wanted)]),
            result_type=ClaimResult, start_to_close_timeout=timedelta(seconds=30),
        )
        nodes = [(n.node_id, True) for n in claim.nodes]
        for index in range(wanted - len(claim.nodes)):
            spec = NodeSpec(
                node_id=f"{ref.session_id}-cold{index}", node_class=CP.name, role=CP.role, image=CP.image,
                kubernetes_version="1.31.0", cpu_cores=1, memory=CP.effective_memory, disk=CP.disk, session=ref,
            )
            await workflow.execute_activity(
                ActivityName.PROVISION_NODE, ProvisionInput(spec=spec), start_to_close_timeout=timedelta(seconds=30)
            )
            nodes.append((spec.node_id, False))
        return nodes


class ScriptStandIns:
    """The script activities under their real names: setup and checks succeed at once (no SSH here)."""

    def all(self) -> list[Any]:
        return [self.create_session_credentials, self.run_setup, self.run_checks, self.run_teardown_scripts]

    @activity.defn(name=ActivityName.CREATE_SESSION_CREDENTIALS)
    async def create_session_credentials(self, session: SessionRef) -> SessionCredentials:
        return SessionCredentials(private_key="test-only", public_key=f"ssh-ed25519 AAAA {session.session_id}")

    @activity.defn(name=ActivityName.RUN_SETUP)
    async def run_setup(self, request: SetupInput) -> SetupResult:
        return SetupResult()

    @activity.defn(name=ActivityName.RUN_CHECKS)
    async def run_checks(self, request: ChecksInput) -> CheckReport:
        return CheckReport()

    @activity.defn(name=ActivityName.RUN_TEARDOWN_SCRIPTS)
    async def run_teardown_scripts(self, request: TeardownInput) -> None:
        return None


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
    pool = PoolActivities(sim, lambda: dict(CLASSES), published, broker_recheck=timedelta(seconds=1))
    worker = Worker(
        dev_env.client,
        task_queue=task_queue,
        workflows=[
            PoolRefillWorkflow, CapacityBrokerWorkflow, PoolStatusWorkflow, IdleSession, GatedSession,
            LabSessionWorkflow, ClaimingSession,
        ],
        activities=[
            *ClusterActivities(sim, key_pair=fake_key_pair, ask_capacity=pool.ask_capacity).all(),
            *ScriptStandIns().all(),
            *pool.all(),
        ],
        max_concurrent_activities=100,
    )
    async with worker, sim:
        yield PoolBed(dev_env.client, task_queue, sim, clock, published, worker)
