"""Rolling upgrades with Worker Versioning on the dev server: a lab started on build A keeps running on
A (every workflow task of it completed by A's worker) while build B, made current, serves new labs."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import VersioningBehavior as ApiVersioningBehavior
from temporalio.api.workflowservice.v1 import SetWorkerDeploymentCurrentVersionRequest
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from labrador.client import LabClient
from labrador.published_images import JsonFilePublishedImages
from labrador.settings import Settings
from labs.models import Catalog
from worker import build_port, build_worker
from workflows.models import LabSessionResult, Phase, SessionTimings

pytestmark = pytest.mark.timeout(90)


async def set_current(client: Client, deployment: str, build_id: str) -> None:
    """`temporal worker deployment set-current-version`, retried until the build's poller is known."""
    async with asyncio.timeout(20):
        while True:
            try:
                await client.workflow_service.set_worker_deployment_current_version(
                    SetWorkerDeploymentCurrentVersionRequest(
                        namespace=client.namespace, deployment_name=deployment, build_id=build_id,
                        identity="test",
                    )
                )
                return
            except RPCError:
                await asyncio.sleep(0.2)  # the version appears once its worker has polled


async def served_by(client: Client, workflow_id: str) -> tuple[set[str], int]:
    """Build IDs of the workers that completed the run's workflow tasks, and its versioning behavior."""
    handle = client.get_workflow_handle(workflow_id)
    history = await handle.fetch_history()
    builds = {e.workflow_task_completed_event_attributes.deployment_version.build_id
              for e in history.events if e.HasField("workflow_task_completed_event_attributes")}
    described = await handle.describe()
    return builds, described.raw_description.workflow_execution_info.versioning_info.behavior


async def test_a_lab_started_on_build_a_stays_on_a_while_build_b_serves_new_labs(
    dev_env: WorkflowEnvironment, tmp_path: Path, catalog: Catalog
) -> None:
    deployment = f"labrador-{uuid.uuid4().hex[:8]}"
    base = dict(temporal_address=dev_env.client.service_client.config.target_host,
                task_queue=f"lab-{uuid.uuid4().hex[:8]}", data_dir=tmp_path, cluster_backend="simulated",
                worker_deployment_name=deployment)
    settings_a = Settings(**base, worker_build_id="1.0.0")
    settings_b = Settings(**base, worker_build_id="1.1.0")
    labs = LabClient(dev_env.client, settings_a, catalog=catalog,
                     published=JsonFilePublishedImages.in_data_dir(tmp_path),
                     timings=SessionTimings(health_interval=timedelta(minutes=30)))
    running: list[tuple[Any, asyncio.Task[None], Any]] = []

    async def start_worker(settings: Settings) -> None:
        port = build_port(settings)  # both builds share the simulated cluster (one data dir)
        worker = build_worker(dev_env.client, settings, port)
        running.append((worker, asyncio.create_task(worker.run()), port))

    try:
        await start_worker(settings_a)
        await set_current(dev_env.client, deployment, "1.0.0")
        old = f"old-{uuid.uuid4().hex[:6]}"
        await labs.start(old, "sandbox")
        assert (await labs.wait_ready(old, timedelta(seconds=20))).ready

        await start_worker(settings_b)  # the release: build B next to A, then B becomes current
        await set_current(dev_env.client, deployment, "1.1.0")
        new = f"new-{uuid.uuid4().hex[:6]}"
        await labs.start(new, "sandbox")
        assert (await labs.wait_ready(new, timedelta(seconds=20))).ready
        await labs.check(old)  # the old lab still answers, on its own build
        await labs.end(old)
        await labs.end(new)
        ended_old: LabSessionResult = await labs.result(old)
        ended_new: LabSessionResult = await labs.result(new)

        assert ended_old.outcome == ended_new.outcome == Phase.ENDED
        assert await served_by(dev_env.client, f"lab-session/{old}") == (
            {"1.0.0"}, ApiVersioningBehavior.VERSIONING_BEHAVIOR_PINNED)
        assert await served_by(dev_env.client, f"lab-session/{new}") == (
            {"1.1.0"}, ApiVersioningBehavior.VERSIONING_BEHAVIOR_PINNED)
    finally:
        for worker, task, port in reversed(running):
            await worker.shutdown()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await port.aclose()
