"""Production entry point: connect to Temporal, register workflows and activities, run.

`python worker.py` runs the worker against the configured Temporal (see labrador.settings);
`labrador dev` runs the same worker in-process next to a dev server and the simulated cluster.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from labrador.settings import Settings, load_settings
from labrador.temporal import connect


def workflow_classes() -> list[type]:
    from workflows.lab_session import LabSessionWorkflow

    return [LabSessionWorkflow, *image_workflow_classes()]


def image_workflow_classes() -> list[type]:
    from workflows.image_build import ImageBuildWorkflow

    return [ImageBuildWorkflow]


def build_port(settings: Settings) -> Any:
    """The cluster port selected by `cluster_backend`."""
    if settings.cluster_backend == "kubevirt":
        from cluster.kubevirt.backend import KubeVirtCluster

        return KubeVirtCluster.from_settings(settings)
    from cluster.simulated.backend import SimulatedCluster

    return SimulatedCluster.from_settings(settings)


def activity_functions(port: Any, settings: Settings) -> list[Callable[..., Any]]:
    from activities.cluster_activities import ClusterActivities

    return [*ClusterActivities(port).all(), *image_activities(settings).shared()]


@functools.cache
def image_worker_queue(task_queue: str) -> str:
    """This process's own queue for the image file chain (worker-specific task queue pattern)."""
    return f"{task_queue}-images-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@functools.cache
def _image_activities(settings_json: str) -> Any:
    from activities.image_activities import ImageActivities

    settings = Settings.model_validate_json(settings_json)
    return ImageActivities(settings, image_worker_queue(settings.task_queue))


def image_activities(settings: Settings) -> Any:
    """One ImageActivities per process and settings: the shared and the pinned worker must agree on
    the queue that `image_worker_queue` hands out."""
    return _image_activities(settings.model_dump_json())


def build_image_queue_worker(client: Client, settings: Settings, activities: Any | None = None) -> Worker:
    """The second worker of the process: polls only this process's own image queue."""
    acts = activities or image_activities(settings)
    return Worker(client, task_queue=acts.worker_queue_name, activities=acts.pinned(),
                  max_concurrent_activities=4)


def build_worker(
    client: Client,
    settings: Settings,
    port: Any,
    *,
    extra_activities: Sequence[Callable[..., Any]] = (),
) -> Worker:
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=workflow_classes(),
        activities=[*activity_functions(port, settings), *extra_activities],
        max_concurrent_activities=200,
    )


async def run(settings: Settings) -> None:
    client = await connect(settings)
    port = build_port(settings)
    worker = build_worker(client, settings, port)
    image_worker = build_image_queue_worker(client, settings)
    logging.info("worker on %s, task queue %s (+ %s), backend %s", settings.temporal_address,
                 settings.task_queue, image_worker.task_queue, settings.cluster_backend)
    await asyncio.gather(worker.run(), image_worker.run())


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(load_settings(use_dev_stack=False)))


if __name__ == "__main__":
    main()
