"""A minimal workflow that calls the script activities by name, the way the lab session does, so the
encryption of credentials and script output in history is tested on a real server by itself."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from cluster.models import SessionRef
from labs.models import Check, Lab
from workflows.models import (
    ActivityName,
    BoundNode,
    CheckReport,
    ChecksInput,
    Model,
    SessionCredentials,
    SetupInput,
    SetupResult,
)


class ProbeInput(Model):
    session: SessionRef
    lab: Lab
    nodes: list[BoundNode]
    checks: list[Check]
    heartbeat_seconds: float = 10.0


class ProbeResult(Model):
    private_key: str
    setup: SetupResult
    report: CheckReport


@workflow.defn
class CodecProbeWorkflow:
    @workflow.run
    async def run(self, data: ProbeInput) -> ProbeResult:
        options = {"start_to_close_timeout": timedelta(seconds=30), "retry_policy": RetryPolicy(maximum_attempts=2)}
        credentials = await workflow.execute_activity(
            ActivityName.CREATE_SESSION_CREDENTIALS, data.session, result_type=SessionCredentials, **options
        )
        setup = await workflow.execute_activity(
            ActivityName.RUN_SETUP,
            SetupInput(session=data.session, lab=data.lab, nodes=data.nodes,
                       student_public_key=credentials.public_key),
            result_type=SetupResult,
            heartbeat_timeout=timedelta(seconds=data.heartbeat_seconds),
            **options,
        )
        nodes = [n.model_copy(update={"host_key": setup.host_keys.get(n.name)}) for n in data.nodes]
        report = await workflow.execute_activity(
            ActivityName.RUN_CHECKS,
            ChecksInput(session=data.session, checks=data.checks, nodes=nodes),
            result_type=CheckReport,
            **options,
        )
        return ProbeResult(private_key=credentials.private_key, setup=setup, report=report)
