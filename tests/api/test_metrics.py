"""The worker's one /metrics endpoint: Temporal's SDK metrics and labrador's, parsed as Prometheus would."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.runtime import Runtime
from temporalio.testing import WorkflowEnvironment

from labrador.client import LabClient
from labrador.metrics import Collector, MetricsError, metrics_runtime
from labrador.published_images import JsonFilePublishedImages
from labrador.settings import Settings
from labrador.temporal import connect
from labs.models import Catalog
from worker import build_port, build_worker
from workflows.models import Phase

from .conftest import free_port

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="session")
def runtime_and_address() -> tuple[Runtime, str]:
    address = f"127.0.0.1:{free_port()}"
    runtime = metrics_runtime(Settings(metrics_address=address))
    assert runtime is not None
    return runtime, address


def scrape(address: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


@pytest.fixture
async def metered(dev_env: WorkflowEnvironment, tmp_path: Path, catalog: Catalog,
                  runtime_and_address: tuple[Runtime, str]) -> AsyncIterator[tuple[LabClient, Collector, str]]:
    runtime, address = runtime_and_address
    settings = Settings(temporal_address=dev_env.client.service_client.config.target_host,
                        task_queue=f"metrics-{uuid.uuid4().hex[:8]}", data_dir=tmp_path, metrics_address=address)
    client = await connect(settings, runtime)
    port = build_port(settings)
    worker = build_worker(client, settings, port)
    task = asyncio.create_task(worker.run())
    labs = LabClient(client, settings, catalog=catalog, published=JsonFilePublishedImages.in_data_dir(tmp_path))
    yield labs, Collector(client, settings, port, runtime.metric_meter), address
    await worker.shutdown()
    await task
    await port.aclose()


async def test_one_endpoint_has_sdk_and_labrador_metrics(metered: tuple[LabClient, Collector, str]) -> None:
    labs, collector, address = metered
    who = f"metrics-{uuid.uuid4().hex[:6]}"
    await labs.start(who, "apiserver-manifest-typo")
    assert (await labs.wait_ready(who, timedelta(seconds=30))).ready
    await labs.check(who)
    for _ in range(100):  # Visibility is eventually consistent
        await collector.collect_once()
        running = scrape(address)
        phases = {labels["phase"]: value for labels, value in running["labrador_labs"]}
        if phases.get("running", 0) >= 1:
            break
        await asyncio.sleep(0.1)
    assert phases["running"] >= 1 and set(phases) >= {p.value for p in Phase}
    assert dict((labels["lab"], value) for labels, value in running["labrador_labs_by_lab"])[
        "apiserver-manifest-typo"] >= 1
    await labs.end(who)
    await labs.result(who)
    await collector.collect_once()
    samples = scrape(address)

    assert any(name.startswith("temporal_") for name in samples)  # the SDK's own, same endpoint
    assert "temporal_workflow_completed" in samples or "temporal_workflow_completed_total" in samples
    ready = [labels for labels, _ in samples["labrador_session_start_to_ready_seconds_count"]
             if labels.get("lab") == "apiserver-manifest-typo"]
    assert ready and ready[0]["start"] in {"warm", "cold", "mixed"}
    assert {labels["source"] for labels, _ in samples["labrador_nodes_claimed_total"]} <= {"warm", "cold"}
    ended = {(labels["lab"], labels["outcome"]) for labels, _ in samples["labrador_sessions_ended_total"]}
    assert ("apiserver-manifest-typo", "ended") in ended
    assert any(labels["outcome"] == "ok" for labels, _ in samples["labrador_check_runs_total"])
    assert "labrador_check_score_ratio_count" in samples
    assert "labrador_pool_free" in samples and "labrador_capacity_queue_length" in samples
    # Bounded labels: no student or session ID anywhere.
    assert not any(who in value for series in samples.values() for labels, _ in series for value in labels.values())


def test_a_taken_metrics_address_is_one_clear_error(runtime_and_address: tuple[Runtime, str]) -> None:
    _runtime, address = runtime_and_address
    with pytest.raises(MetricsError, match=f"metrics_address: cannot serve metrics on '{address}'"):
        metrics_runtime(Settings(metrics_address=address))
