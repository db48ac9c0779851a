"""labrador's own metrics recorded from workflow code and activity/workflow interceptors.

Everything goes through the Temporal SDK runtime's metric meter, so labrador's `labrador_*` metrics and
the SDK's `temporal_*` metrics share the worker's one Prometheus endpoint (labrador/metrics.py). In a
workflow, `workflow.metric_meter()` records nothing while a history is replayed, so a metric is counted
once per real event and recording is not a workflow command (no `workflow.patched` needed).

Labels are bounded: lab names, node classes, outcomes, event types; never student or session IDs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from temporalio import activity, workflow
from temporalio.common import MetricMeter
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

with workflow.unsafe.imports_passed_through():
    from workflows.image_models import IMAGE_BUILD_WORKFLOW, ImageBuildResult
    from workflows.models import ActivityName, BoundNode, CheckReport, LabSessionResult

# Bucket boundaries in seconds (PrometheusConfig.histogram_bucket_overrides, labrador/metrics.py).
BUCKETS: dict[str, list[float]] = {
    "labrador_session_start_to_ready_seconds": [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900],
    "labrador_session_queue_wait_seconds": [1, 5, 15, 30, 60, 120, 300, 600, 1800],
    "labrador_image_build_duration_seconds": [60, 120, 300, 600, 900, 1800, 3600, 7200],
    "labrador_check_score_ratio": [0, 0.25, 0.5, 0.75, 0.99, 1],
}


def _meter() -> MetricMeter:
    try:
        return workflow.metric_meter()
    except Exception:  # not in a workflow (a unit test calling the helper)
        return MetricMeter.noop


def session_ready(lab: str, started_at: datetime, ready_at: datetime, nodes: Iterable[BoundNode]) -> None:
    """At READY: start->ready latency (warm: every node from the pool; cold: none; mixed) and claims."""
    nodes = list(nodes)
    warm = sum(1 for node in nodes if node.warm)
    start = "warm" if warm == len(nodes) else "cold" if warm == 0 else "mixed"
    meter = _meter()
    meter.create_histogram_float(
        "labrador_session_start_to_ready_seconds", "seconds from start to ready per lab and start kind", "s"
    ).record((ready_at - started_at).total_seconds(), {"lab": lab, "start": start})
    claimed = meter.create_counter("labrador_nodes_claimed_total", "lab nodes by source: warm pool or cold")
    for source, count in (("warm", warm), ("cold", len(nodes) - warm)):
        if count:
            claimed.add(count, {"source": source})


def session_result(result: LabSessionResult) -> None:
    meter = _meter()
    labels = {"lab": result.lab_name}
    meter.create_counter("labrador_sessions_ended_total", "sessions by lab and outcome").add(
        1, {**labels, "outcome": str(result.outcome)}
    )
    if result.teardown_problems:
        meter.create_counter("labrador_teardown_problems_total", "teardown steps that gave up (leak collector)").add(
            len(result.teardown_problems), labels
        )
    queued = result.phase_seconds.get("queued")
    if queued is not None:
        meter.create_histogram_float(
            "labrador_session_queue_wait_seconds", "seconds a session waited in the capacity queue", "s"
        ).record(queued, labels)


def image_build(node_class: str, outcome: str, seconds: float) -> None:
    meter = _meter()
    labels = {"node_class": node_class, "outcome": outcome}
    meter.create_counter("labrador_image_builds_total", "image builds by class and outcome").add(1, labels)
    meter.create_histogram_float("labrador_image_build_duration_seconds", "image build duration", "s").record(
        seconds, labels
    )


class _WorkflowMetrics(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        started = workflow.now()
        name = workflow.info().workflow_type
        try:
            result = await self.next.execute_workflow(input)
        except Exception:  # a failed build (an eviction is a BaseException and is not counted)
            if name == IMAGE_BUILD_WORKFLOW:
                node_class = getattr(input.args[0], "node_class", None) if input.args else None
                seconds = (workflow.now() - started).total_seconds()
                image_build(getattr(node_class, "name", "unknown"), "failed", seconds)
            raise
        if isinstance(result, LabSessionResult):
            session_result(result)
        elif isinstance(result, ImageBuildResult):
            image_build(result.node_class, "published" if result.published else "built",
                        (workflow.now() - started).total_seconds())
        return result


class _ActivityMetrics(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        if activity.info().activity_type != ActivityName.RUN_CHECKS:
            return await self.next.execute_activity(input)
        meter = activity.metric_meter()
        runs = meter.create_counter("labrador_check_runs_total", "check runs (final grading and on demand)")
        try:
            report = await self.next.execute_activity(input)
        except Exception:
            runs.add(1, {"outcome": "error"})
            raise
        runs.add(1, {"outcome": "ok"})
        if isinstance(report, CheckReport) and report.max_score:
            meter.create_histogram_float("labrador_check_score_ratio", "score / max score of check runs").record(
                report.score / report.max_score
            )
        return report


class MetricsInterceptor(Interceptor):
    """Registered on every worker (worker.py); records nothing when no metrics endpoint is configured."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityMetrics(next)

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        return _WorkflowMetrics
