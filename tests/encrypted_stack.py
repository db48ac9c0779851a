"""A worker with the codec on the dev server (production wiring, simulated cluster) and a LabClient
that encrypts like it: the stack the tests of encrypted histories and keyless clients run against."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from cluster.published_images import JsonFilePublishedImages
from labrador.client import LabClient
from labrador.codec import new_key_entry
from labrador.settings import PACKAGE_LABS_DIR, Settings
from labrador.temporal import data_converter
from labs.loader import load_catalog
from worker import build_port, build_worker
from workflows.models import SessionTimings


@dataclass
class EncryptedStack:
    env: WorkflowEnvironment
    settings: Settings
    labs: LabClient
    port: Any

    def client_with(self, **changes: Any) -> LabClient:
        """A client of the same stack with other settings (e.g. no codec key, another key)."""
        settings = self.settings.model_copy(update=changes)
        client = Client(self.env.client.service_client, namespace=self.env.client.namespace,
                        data_converter=data_converter(settings))
        return LabClient(client, settings, catalog=self.labs.catalog, published=self.labs.published,
                         timings=self.labs.timings)


@asynccontextmanager
async def encrypted_stack(
    env: WorkflowEnvironment, data_dir: Path, *, key_id: str, queue_prefix: str
) -> AsyncIterator[EncryptedStack]:
    """A worker on its own task queue whose codec has one fresh key named `key_id`."""
    settings = Settings(
        temporal_address=env.client.service_client.config.target_host,
        task_queue=f"{queue_prefix}-{uuid.uuid4().hex[:8]}", data_dir=data_dir, cluster_backend="simulated",
        codec_keys=SecretStr(new_key_entry(key_id)),
    )
    client = Client(env.client.service_client, namespace=env.client.namespace,
                    data_converter=data_converter(settings))
    labs = LabClient(client, settings, catalog=load_catalog(PACKAGE_LABS_DIR),
                     published=JsonFilePublishedImages.in_data_dir(data_dir),
                     timings=SessionTimings(health_interval=timedelta(minutes=5)))
    port = build_port(settings)
    async with build_worker(client, settings, port):
        yield EncryptedStack(env, settings, labs, port)
    await port.aclose()
