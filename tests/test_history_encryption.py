"""On a real Temporal server: credentials and script output never reach history in plaintext.

A worker and a client with the codec run a workflow that calls the script activities by name against
loopback SSH servers; the history is then fetched by a client WITHOUT the codec and searched byte by
byte (payload data is raw bytes in the protobuf, so plaintext JSON would appear verbatim).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from pydantic import SecretStr
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.script_activities import ScriptActivities
from cluster.models import SessionRef, SshTarget
from cluster.ssh import RetryPolicy, SshRunner
from labrador.codec import new_key_entry
from labrador.settings import Settings
from labrador.temporal import data_converter
from labs.models import Check
from tests.codec_probe_workflow import CodecProbeWorkflow, ProbeInput, ProbeResult
from tests.sshd import LoopbackSshd
from tests.test_script_activities import make_lab
from workflows.models import BoundNode

OUTPUT_MARKER = "script-output-7f3a9c"
TWO_NODES = [{"name": "controlplane", "role": "controlplane", "class": "cp"},
             {"name": "node01", "role": "worker", "class": "wk"}]


class Port:
    def __init__(self, targets: dict[str, SshTarget]) -> None:
        self.targets = targets

    async def ssh_target(self, node_id: str) -> SshTarget:
        return self.targets[node_id]


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[list[LoopbackSshd], asyncssh.SSHKey]]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    servers = [await LoopbackSshd(tmp_path / name, [key.export_public_key().decode()], node_id=f"id-{name}").start()
               for name in ("controlplane", "node01")]
    yield servers, key
    for server in servers:
        await server.stop()


async def run_probe(
    env: WorkflowEnvironment, servers: list[LoopbackSshd], key: asyncssh.SSHKey, lab: Any, checks: list[Check]
) -> tuple[Client, WorkflowHandle[Any, Any], ProbeResult | BaseException]:
    settings = Settings(codec_keys=SecretStr(new_key_entry("k1")), data_dir=Path("/nonexistent"))
    client = Client(env.client.service_client, namespace=env.client.namespace,
                    data_converter=data_converter(settings))
    port = Port({s.node_id: s.target for s in servers})
    activities = ScriptActivities(port, settings, runner=SshRunner(key, retry=RetryPolicy(attempts=2)))  # type: ignore[arg-type]
    queue = f"codec-{uuid.uuid4().hex[:8]}"
    session = SessionRef(session_id="s-enc", workflow_id=f"probe-{queue}", run_id="r")
    bound = [BoundNode(name=n, node_id=s.node_id, role="controlplane" if n == "controlplane" else "worker",
                       warm=True, address="10.0.0.9") for n, s in zip(("controlplane", "node01"), servers, strict=True)]
    outcome: ProbeResult | BaseException
    async with Worker(client, task_queue=queue, workflows=[CodecProbeWorkflow], activities=activities.all()):
        handle = await client.start_workflow(
            CodecProbeWorkflow.run, ProbeInput(session=session, lab=lab, nodes=bound, checks=checks),
            id=session.workflow_id, task_queue=queue, result_type=ProbeResult,
        )
        try:
            outcome = await handle.result()
        except WorkflowFailureError as exc:
            outcome = exc
    return client, handle, outcome


async def raw_history(env: WorkflowEnvironment, workflow_id: str) -> bytes:
    """Every event as protobuf bytes, fetched through the fixture's client, which has no codec."""
    history = await env.client.get_workflow_handle(workflow_id).fetch_history()
    return b"".join(event.SerializeToString() for event in history.events)


def key_body(private_key: str) -> bytes:
    return "".join(private_key.strip().splitlines()[1:-1]).encode()


@pytest.mark.timeout(60)
async def test_history_holds_no_private_key_or_script_output(
    dev_env: WorkflowEnvironment, nodes: tuple[list[LoopbackSshd], asyncssh.SSHKey]
) -> None:
    servers, key = nodes
    lab = make_lab(
        nodes=TWO_NODES,
        scripts={"setup": [{"name": "say", "run": f"echo {OUTPUT_MARKER}-setup"}]},
    )
    checks = [Check.model_validate({"name": "c", "run": f"echo {OUTPUT_MARKER}-check", "points": 2})]
    _, handle, outcome = await run_probe(dev_env, servers, key, lab, checks)

    assert isinstance(outcome, ProbeResult)  # with the codec the result decodes
    assert outcome.private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert f"{OUTPUT_MARKER}-setup" in outcome.setup.scripts[0].output
    assert outcome.report.score == 2 and f"{OUTPUT_MARKER}-check" in outcome.report.results[0].output_excerpt

    raw = await raw_history(dev_env, handle.id)
    assert b"run_setup" in raw  # the search does see what is not a payload
    assert OUTPUT_MARKER.encode() not in raw
    assert b"PRIVATE KEY" not in raw and key_body(outcome.private_key)[:40] not in raw
    assert b"binary/encrypted" in raw

    with pytest.raises(Exception, match=r"binary/encrypted|[Ee]ncod|decode"):  # no codec, no result
        await dev_env.client.get_workflow_handle(handle.id, result_type=ProbeResult).result()


@pytest.mark.timeout(60)
async def test_failed_setup_reason_is_encrypted_but_readable_with_the_codec(
    dev_env: WorkflowEnvironment, nodes: tuple[list[LoopbackSshd], asyncssh.SSHKey]
) -> None:
    servers, key = nodes
    lab = make_lab(bootstrap="none", nodes=TWO_NODES, scripts={"setup": [
        {"name": "break", "node": "node01", "run": f"echo {OUTPUT_MARKER}-failure >&2; exit 7"}]})
    _, handle, outcome = await run_probe(dev_env, servers, key, lab, [])

    assert isinstance(outcome, WorkflowFailureError)
    cause = outcome.cause.cause if isinstance(outcome.cause.cause, ApplicationError) else outcome.cause
    assert isinstance(cause, ApplicationError) and cause.type == "SetupScriptFailed"
    assert "'break' failed on node 'node01' (exit code 7)" in cause.message
    assert f"{OUTPUT_MARKER}-failure" in cause.message

    raw = await raw_history(dev_env, handle.id)
    assert b"SetupScriptFailed" in raw  # the failure is there...
    assert OUTPUT_MARKER.encode() not in raw  # ...its message and details are not readable


@pytest.mark.timeout(60)
async def test_setup_resumes_from_heartbeat_after_the_worker_dies(
    dev_env: WorkflowEnvironment, nodes: tuple[list[LoopbackSshd], asyncssh.SSHKey]
) -> None:
    servers, key = nodes
    cp = servers[0]
    lab = make_lab(bootstrap="none", nodes=TWO_NODES, scripts={"setup": [
        {"name": "once", "run": "echo ran >> once.log"},
        # first attempt: hangs until the worker dies; the resumed attempt finishes
        {"name": "slow", "run": "if [ -f slow.started ]; then echo resumed; else touch slow.started; sleep 30; fi"},
    ]})
    settings = Settings(codec_keys=SecretStr(new_key_entry("k1")), data_dir=Path("/nonexistent"))
    client = Client(dev_env.client.service_client, namespace=dev_env.client.namespace,
                    data_converter=data_converter(settings))
    activities = ScriptActivities(Port({s.node_id: s.target for s in servers}), settings,  # type: ignore[arg-type]
                                  runner=SshRunner(key, retry=RetryPolicy(attempts=2)))
    queue = f"resume-{uuid.uuid4().hex[:8]}"
    bound = [BoundNode(name=n, node_id=s.node_id, role="controlplane" if n == "controlplane" else "worker",
                       warm=True) for n, s in zip(("controlplane", "node01"), servers, strict=True)]
    session = SessionRef(session_id="s-res", workflow_id=f"probe-{queue}", run_id="r")

    def worker() -> Worker:
        # a short sticky timeout: the workflow task meant for the dead worker moves on quickly
        return Worker(client, task_queue=queue, workflows=[CodecProbeWorkflow], activities=activities.all(),
                      sticky_queue_schedule_to_start_timeout=timedelta(seconds=1))

    first = worker()
    running = asyncio.create_task(first.run())
    handle = await client.start_workflow(
        CodecProbeWorkflow.run, ProbeInput(session=session, lab=lab, nodes=bound, checks=[], heartbeat_seconds=3),
        id=session.workflow_id, task_queue=queue, result_type=ProbeResult,
    )
    async with asyncio.timeout(20):
        while not (cp.root / "slow.started").exists():  # noqa: ASYNC110 (a file written by the node)
            await asyncio.sleep(0.05)
    await asyncio.sleep(3)  # a heartbeat carrying "once is done" reaches the server
    running.cancel()  # the worker dies with `slow` running
    with contextlib.suppress(BaseException):
        await running

    async with worker():
        result = await handle.result()
    assert (cp.root / "once.log").read_text() == "ran\n"  # not run again by the resumed attempt
    assert [(s.script, s.output.strip()) for s in result.setup.scripts] == [("once", ""), ("slow", "resumed")]
    assert cp.commands.count("echo ran >> once.log") == 1
