"""Sessions on the real stack: dev server, production worker wiring, simulated cluster, real SSH activities."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from cluster.published_images import JsonFilePublishedImages
from cluster.simulated.faults import FaultPlan
from labrador.client import LabClient
from labrador.settings import PACKAGE_LABS_DIR, Settings
from labs.loader import load_catalog
from labs.models import Catalog
from worker import build_port, build_worker
from workflows.models import SessionTimings


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(PACKAGE_LABS_DIR)


@dataclass
class Stack:
    """One isolated stack per test: its own task queue and simulated cluster file on the shared server."""

    env: WorkflowEnvironment
    settings: Settings
    labs: LabClient
    workers: list[tuple[Worker, asyncio.Task[None], Any]] = field(default_factory=list)

    def port(self) -> Any:
        return self.workers[-1][2]

    async def start_worker(self, faults: FaultPlan | None = None) -> Any:
        port = build_port(self.settings)
        if faults is not None:
            port.faults = faults
        worker = build_worker(self.env.client, self.settings, port)
        self.workers.append((worker, asyncio.create_task(worker.run()), port))
        return port

    async def kill_worker(self) -> None:
        """Stop the newest worker abruptly: its running activities are abandoned, not completed."""
        _worker, task, port = self.workers.pop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await port.aclose()

    async def stop(self) -> None:
        while self.workers:
            worker, task, port = self.workers.pop()
            await worker.shutdown()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await port.aclose()


@pytest.fixture
async def stack(dev_env: WorkflowEnvironment, tmp_path: Path, catalog: Catalog) -> AsyncIterator[Stack]:
    settings = Settings(
        temporal_address=dev_env.client.service_client.config.target_host,
        task_queue=f"lab-{uuid.uuid4().hex[:8]}",
        data_dir=tmp_path,
        cluster_backend="simulated",
    )
    timings = SessionTimings(health_interval=timedelta(seconds=1), health_grace=timedelta(seconds=2))
    labs = LabClient(dev_env.client, settings, catalog=catalog,
                     published=JsonFilePublishedImages.in_data_dir(tmp_path), timings=timings)
    built = Stack(dev_env, settings, labs)
    yield built
    await built.stop()
