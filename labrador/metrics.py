"""The worker's Prometheus endpoint: Temporal's SDK metrics and labrador's own, one `/metrics`.

`metrics_runtime(settings)` builds the SDK runtime whose telemetry serves `/metrics` on
`metrics_address`; the worker's client is connected with it, so the SDK's `temporal_*` metrics and
everything recorded through its metric meter (`labrador_*`: workflows/metrics.py and the `Collector`
below) come out of the same endpoint.

The `Collector` samples what no single event says, every `interval`:
- `labrador_labs{phase}` and `labrador_labs_by_lab{lab}`: running sessions from Visibility counts (right
  with several workers: every worker reports the same totals, so aggregate with max, not sum). Servers
  that support `GROUP BY LabPhase, LabName` answer in one query; others (the dev server: only
  `ExecutionStatus` groups) get one count per phase and one per lab, bounded by the catalog, not by
  the number of sessions.
- `labrador_pool_free|provisioning|claimed|target{node_class}` from the cluster port's inventory and the
  last refill's targets.
- `labrador_capacity_queue_length` and `labrador_capacity_queue_oldest_wait_seconds` from the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode

from cluster.background import running_beside
from labrador.settings import Settings
from workflows import search_attributes
from workflows.lab_session import WORKFLOW_NAME
from workflows.metrics import BUCKETS
from workflows.models import Phase
from workflows.pool_models import CapacityState, capacity_broker_id

log = logging.getLogger("labrador.metrics")


class MetricsError(RuntimeError):
    pass


def metrics_runtime(settings: Settings) -> Runtime | None:
    """The SDK runtime serving /metrics on `metrics_address`, or None when it is unset."""
    if not settings.metrics_address:
        return None
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(
            bind_address=settings.metrics_address, durations_as_seconds=True,
            histogram_bucket_overrides=BUCKETS,
        )))
    except Exception as exc:  # the core reports a taken port or a bad address as a plain exception
        raise MetricsError(f"setting metrics_address: cannot serve metrics on {settings.metrics_address!r}: "
                           f"{' '.join(str(exc).split())}") from None


class _Gauge:
    """A gauge per label set that goes back to 0 for label sets that disappeared."""

    def __init__(self, meter: MetricMeter, name: str, description: str, label: str) -> None:
        self._gauge = meter.create_gauge_float(name, description)
        self._label = label
        self._seen: set[str] = set()

    def set_all(self, values: dict[str, float]) -> None:
        for key in self._seen - set(values):
            self._gauge.set(0, {self._label: key})
        for key, value in values.items():
            self._gauge.set(value, {self._label: key})
        self._seen |= set(values)


class Collector:
    def __init__(self, client: Client, settings: Settings, port: Any, meter: MetricMeter, *,
                 interval: timedelta = timedelta(seconds=15)) -> None:
        self.client = client
        self.settings = settings
        self.port = port
        self.interval = interval
        self._group_by = True
        self.labs = _Gauge(meter, "labrador_labs", "running lab sessions by phase (Visibility)", "phase")
        self.labs_by_lab = _Gauge(meter, "labrador_labs_by_lab", "running lab sessions by lab (Visibility)", "lab")
        self.pool = {
            what: _Gauge(meter, name, f"pool nodes {what} per node class", "node_class")
            for what, name in (("free", "labrador_pool_free"), ("provisioning", "labrador_pool_provisioning"),
                               ("claimed", "labrador_pool_claimed"), ("target", "labrador_pool_target"))
        }
        self.queue_length = meter.create_gauge("labrador_capacity_queue_length", "sessions waiting for capacity")
        self.queue_oldest = meter.create_gauge_float(
            "labrador_capacity_queue_oldest_wait_seconds", "how long the first queued session has waited", "s"
        )
        self.errors = meter.create_counter("labrador_metrics_collect_errors_total", "failed metric samples")

    async def run(self) -> None:
        while True:
            await self.collect_once()
            await asyncio.sleep(self.interval.total_seconds())

    async def collect_once(self) -> None:
        for name, step in (("visibility", self._labs), ("pool", self._pool), ("queue", self._queue)):
            try:
                await step()
            except Exception as exc:  # a sample that fails is counted and logged; the next one retries
                self.errors.add(1, {"source": name})
                log.warning("metrics: %s sample failed: %s", name, " ".join(str(exc).split())[:300])

    async def _count(self, where: str) -> int:
        query = f"WorkflowType = '{WORKFLOW_NAME}' AND ExecutionStatus = 'Running'{where}"
        return (await self.client.count_workflows(query)).count

    async def _labs(self) -> None:
        by_phase: Counter[str] = Counter()
        by_lab: Counter[str] = Counter()
        if self._group_by:
            try:
                answer = await self.client.count_workflows(
                    f"WorkflowType = '{WORKFLOW_NAME}' AND ExecutionStatus = 'Running' GROUP BY LabPhase, LabName"
                )
                for group in answer.groups:
                    phase, lab = (str(v) for v in group.group_values)
                    by_phase[phase] += group.count
                    by_lab[lab] += group.count
            except RPCError as exc:
                if exc.status != RPCStatusCode.INVALID_ARGUMENT:
                    raise
                self._group_by = False  # this server groups by ExecutionStatus only
        if not self._group_by:
            for phase in Phase:
                by_phase[phase.value] = await self._count(f" AND {search_attributes.LAB_PHASE.name} = '{phase.value}'")
            for lab in self._catalog_labs():
                by_lab[lab] = await self._count(f" AND {search_attributes.LAB_NAME.name} = '{lab}'")
        self.labs.set_all({phase: float(count) for phase, count in by_phase.items()})
        self.labs_by_lab.set_all({lab: float(count) for lab, count in by_lab.items()})

    def _catalog_labs(self) -> list[str]:
        from labs.loader import load_catalog

        return sorted(load_catalog(self.settings.catalog_dir).labs)

    async def _pool(self) -> None:
        from labrador import schedules

        inventory = await self.port.inventory()
        counts: dict[str, Counter[str]] = {what: Counter() for what in ("free", "provisioning", "claimed")}
        for node in inventory.nodes:
            state = str(node.state)
            if state in counts:
                counts[state][node.node_class] += 1
        last = await schedules.last_refill_result(self.client)
        targets = {name: float(report.target) for name, report in (last.classes.items() if last else [])}
        classes = set(targets) | {c for counter in counts.values() for c in counter}
        for what, counter in counts.items():
            self.pool[what].set_all({c: float(counter[c]) for c in classes})
        self.pool["target"].set_all(targets)

    async def _queue(self) -> None:
        handle = self.client.get_workflow_handle(capacity_broker_id(self.settings.task_queue))
        try:
            state = await handle.query("state", result_type=CapacityState)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:  # no broker yet: nobody ever queued
                self.queue_length.set(0)
                self.queue_oldest.set(0)
                return
            raise
        except Exception as exc:  # the broker closed (continue-as-new in between): try again next time
            if "closed" in str(exc).lower() or "completed" in str(exc).lower():
                return
            raise
        self.queue_length.set(max(state.queue_length, len(state.queue)))  # `queue` lists only the head
        oldest = min((entry.waiting_since for entry in state.queue), default=None)
        self.queue_oldest.set((datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0)


@contextlib.asynccontextmanager
async def collecting(client: Client, settings: Settings, port: Any, runtime: Runtime | None) -> Any:
    """Run a Collector in the background while the block runs (nothing when metrics are off)."""
    if runtime is None:
        yield None
        return
    collector = Collector(client, settings, port, runtime.metric_meter)
    async with running_beside(collector.run):
        yield collector
