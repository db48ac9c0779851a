"""Production entry point: connect to Temporal, register workflows and activities, run.

`python worker.py` runs the worker against the configured Temporal (see labrador.settings);
`labrador dev` runs the same worker in-process next to a dev server and the simulated cluster.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import Worker, WorkerDeploymentConfig

from labrador.settings import Settings, load_settings
from labrador.temporal import connect
from labs.models import parse_duration


def workflow_classes(*, versioned: bool = False) -> list[type]:
    """The worker's workflows; a versioned worker registers the lab session as PINNED (same name)."""
    from workflows.bulk_end import BulkEndWorkflow
    from workflows.capacity.broker import CapacityBrokerWorkflow
    from workflows.lab_session import LabSessionWorkflow, PinnedLabSessionWorkflow
    from workflows.pool_refill import PoolRefillWorkflow
    from workflows.pool_status import PoolStatusWorkflow
    from workflows.webhooks import WebhookDeliveryWorkflow

    session = PinnedLabSessionWorkflow if versioned else LabSessionWorkflow
    return [session, PoolRefillWorkflow, CapacityBrokerWorkflow, PoolStatusWorkflow,
            WebhookDeliveryWorkflow, BulkEndWorkflow, *image_workflow_classes()]


def image_workflow_classes() -> list[type]:
    from workflows.image_build import ImageBuildWorkflow

    return [ImageBuildWorkflow]


def build_port(settings: Settings) -> Any:
    """The cluster port selected by `cluster_backend`."""
    if settings.cluster_backend == "kubevirt":
        from cluster.kubevirt.backend import KubeVirtCluster

        return KubeVirtCluster.from_settings(settings)
    from activities.node_commands import SIMULATED_PLATFORM_ANSWERS
    from cluster.simulated.backend import SimulatedCluster
    from cluster.simulated.scenario import Scenario, ScenarioRule

    cluster = SimulatedCluster.from_settings(settings)
    if settings.sim_scenario_file is None:
        # Simulated nodes answer the platform's setup commands (join command, session key) like real ones.
        cluster.default_scenario = Scenario(rules=[ScenarioRule(**rule) for rule in SIMULATED_PLATFORM_ANSWERS])
    return cluster


def activity_functions(port: Any, settings: Settings) -> list[Callable[..., Any]]:
    from activities.bulk_activities import bulk_activities
    from activities.cluster_activities import ClusterActivities
    from activities.script_activities import ScriptActivities
    from activities.webhook_activities import WebhookActivities

    pool = pool_activities(port, settings)
    return [
        *bulk_activities(),
        *ClusterActivities(port, ask_capacity=pool.ask_capacity).all(),
        *ScriptActivities(port, settings).all(),
        *WebhookActivities(settings).all(),
        *image_activities(settings).shared(),
        *pool.all(),
    ]


@functools.cache
def image_worker_queue(task_queue: str) -> str:
    """This process's own queue for the image file chain (worker-specific task queue pattern)."""
    return f"{task_queue}-images-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


_IMAGE_ACTIVITIES: dict[str, Any] = {}


def image_activities(settings: Settings) -> Any:
    """One ImageActivities per process and task queue: the shared and the pinned worker must agree
    on the queue that `image_worker_queue` hands out."""
    if settings.task_queue not in _IMAGE_ACTIVITIES:
        from activities.image_activities import ImageActivities
        from labrador.published_images import published_images_store

        _IMAGE_ACTIVITIES[settings.task_queue] = ImageActivities(
            settings, image_worker_queue(settings.task_queue), published_images=published_images_store(settings)
        )
    return _IMAGE_ACTIVITIES[settings.task_queue]


def build_image_queue_worker(client: Client, settings: Settings, activities: Any | None = None) -> Worker:
    """The second worker of the process: polls only this process's own image queue."""
    acts = activities or image_activities(settings)
    swept = acts.sweep_stale()
    if swept:
        logging.info("removed %d stale image scratch dirs: %s", len(swept), ", ".join(swept))
    return Worker(client, task_queue=acts.worker_queue_name, activities=acts.pinned(),
                  max_concurrent_activities=4, graceful_shutdown_timeout=graceful_shutdown(settings))


def pool_activities(port: Any, settings: Settings) -> Any:
    """The pool's activities (`.all()`): node classes from the catalog (re-read every refill), effective
    images; its `ask_capacity` also serves the claim's call (ClusterActivities, CLAIM_ASKS_FLOW)."""
    from activities.pool_activities import PoolActivities
    from labrador.published_images import published_images_store
    from labs.loader import load_catalog

    published = published_images_store(settings)
    return PoolActivities(port, lambda: load_catalog(settings.catalog_dir).node_classes, published)


# The worker's limits for many labs at once (bench/session_overhead.py runs with the same). Script
# activities (setup, checks over SSH) mostly wait on the network: 200 at once.
WORKER_TUNING: dict[str, Any] = {"max_concurrent_activities": 200}


def build_worker(
    client: Client,
    settings: Settings,
    port: Any,
    *,
    extra_activities: Sequence[Callable[..., Any]] = (),
) -> Worker:
    from workflows.metrics import MetricsInterceptor

    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=workflow_classes(versioned=deployment_config(settings) is not None),
        activities=[*activity_functions(port, settings), *extra_activities],
        **WORKER_TUNING,
        interceptors=[MetricsInterceptor()],  # labrador_* metrics; no-ops without a metrics endpoint
        # Evicted runs replay at their next task (every health check): size it to the labs a worker holds.
        max_cached_workflows=settings.worker_max_cached_workflows,
        # After shutdown() (SIGTERM): running activities (setup scripts) get this long to finish.
        graceful_shutdown_timeout=graceful_shutdown(settings),
        deployment_config=deployment_config(settings),
    )


def graceful_shutdown(settings: Settings) -> timedelta:
    parsed = parse_duration(settings.worker_graceful_shutdown)
    assert isinstance(parsed, timedelta)  # validated by the settings model
    return parsed


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """Worker Versioning (docs/session.md#rolling-upgrades-worker-versioning): this worker serves one
    build of the Worker Deployment. Lab sessions are PINNED to the build they started on (declared on
    the workflow); everything else (capacity broker, pool refill, image builds) moves to the current
    build at its next task (AUTO_UPGRADE, the default here), so their changes still go behind
    `workflow.patched`."""
    if settings.worker_deployment_name is None or settings.worker_build_id is None:
        return None
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(deployment_name=settings.worker_deployment_name,
                                        build_id=settings.worker_build_id),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.AUTO_UPGRADE,
    )


def build_workers(client: Client, settings: Settings, port: Any) -> list[Worker]:
    """Both workers a process runs: the shared queue and its own image queue (run them together)."""
    return [build_worker(client, settings, port), build_image_queue_worker(client, settings)]


async def run(settings: Settings) -> None:
    from labrador.metrics import collecting, metrics_runtime

    stop = stop_on_signals()  # before anything else: a pod may be stopped while it connects
    runtime = metrics_runtime(settings)  # serves /metrics on metrics_address (SDK + labrador_* metrics)
    client = await connect(settings, runtime)
    port = build_port(settings)
    workers = build_workers(client, settings, port)
    logging.info("worker on %s, task queues %s, backend %s%s%s", settings.temporal_address,
                 ", ".join(w.task_queue for w in workers), settings.cluster_backend,
                 f", metrics on http://{settings.metrics_address}/metrics" if runtime else "",
                 f", build {settings.worker_deployment_name}.{settings.worker_build_id}"
                 if settings.worker_build_id else "")
    async with collecting(client, settings, port, runtime):
        await run_until_stopped(workers, stop)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM (a pod being stopped) or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_until_stopped(workers: Sequence[Worker], stop: asyncio.Event) -> None:
    """Run the workers until `stop`: then stop polling, give running activities `worker_graceful_shutdown`
    to finish (the pod's terminationGracePeriodSeconds is longer), and return. Workflows need no
    draining: their state is in Temporal, and another worker of the same build replays them."""
    running = [asyncio.create_task(w.run()) for w in workers]
    stopping = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*running, stopping], return_when=asyncio.FIRST_COMPLETED)
        if stopping in done:
            logging.info("stop requested: polling stopped, running activities may finish (graceful shutdown)")
            await asyncio.gather(*(w.shutdown() for w in workers))
        await asyncio.gather(*running)  # a worker that failed raises here
    finally:
        stopping.cancel()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cluster.secret_files import InsecureKeyFile
    from cluster.ssh import SshError
    from labrador.codec import CodecError
    from labrador.settings import SettingsError

    try:
        asyncio.run(run(load_settings(use_dev_stack=False)))
    except (SettingsError, CodecError, SshError, InsecureKeyFile) as exc:  # configuration: one line, exit 1
        logging.error("%s", exc)
        raise SystemExit(1) from None
    # Stopped cleanly (SIGTERM): the Temporal runtime's Rust threads can abort CPython's finalisation
    # ("PyGILState_Release ... must be current", temporalio/sdk-python#300) and turn exit 0 into an
    # abort; everything is shut down by now, so skip interpreter teardown (as the CLI does).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
