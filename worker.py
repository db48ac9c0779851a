"""Production entry point: connect to Temporal, register workflows and activities, run.

`python worker.py` runs the worker against the configured Temporal (see labrador.settings);
`labrador dev` runs the same worker in-process next to a dev server and the simulated cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from labrador.settings import Settings, load_settings
from labrador.temporal import connect


def workflow_classes() -> list[type]:
    from workflows.capacity_broker import CapacityBrokerWorkflow
    from workflows.lab_session import LabSessionWorkflow
    from workflows.pool_refill import PoolRefillWorkflow
    from workflows.pool_status import PoolStatusWorkflow

    return [LabSessionWorkflow, PoolRefillWorkflow, CapacityBrokerWorkflow, PoolStatusWorkflow]


def build_port(settings: Settings) -> Any:
    """The cluster port selected by `cluster_backend`."""
    if settings.cluster_backend == "kubevirt":
        from cluster.kubevirt.backend import KubeVirtCluster

        return KubeVirtCluster.from_settings(settings)
    from cluster.simulated.backend import SimulatedCluster

    return SimulatedCluster.from_settings(settings)


def activity_functions(port: Any, settings: Settings) -> list[Callable[..., Any]]:
    from activities.cluster_activities import ClusterActivities

    return [*ClusterActivities(port).all(), *pool_activities(port, settings)]


def pool_activities(port: Any, settings: Settings) -> list[Callable[..., Any]]:
    """The pool's activities: node classes from the catalog (re-read every refill), effective images."""
    from activities.pool_activities import PoolActivities
    from labrador.published_images import JsonFilePublishedImages
    from labs.loader import load_catalog

    # The kubevirt backend publishes images in a ConfigMap (cluster.kubevirt.published_images); until
    # that store has a factory here, both backends read the JSON file in the data directory.
    published = JsonFilePublishedImages.in_data_dir(settings.data_dir)
    return PoolActivities(port, lambda: load_catalog(settings.catalog_dir).node_classes, published).all()


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
    logging.info("worker on %s, task queue %s, backend %s", settings.temporal_address,
                 settings.task_queue, settings.cluster_backend)
    await worker.run()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(load_settings(use_dev_stack=False)))


if __name__ == "__main__":
    main()
