"""Whole lab sessions with the codec on the dev server (production worker wiring, simulated cluster,
real SSH activities): the history read without the codec holds no private key and no script or check
output; with the codec, the result, the on-demand check and a failed setup's reason all decode."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from cluster.simulated.scenario import Scenario, ScenarioRule
from tests.encrypted_stack import EncryptedStack, encrypted_stack
from workflows.models import Phase

pytestmark = pytest.mark.timeout(60)
MARKER = "secret-output-5b1e"
LAB = "kubelet-broken-worker"  # control plane + node01, setup scripts on both, checks on both


@pytest.fixture
async def encrypted(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[EncryptedStack]:
    async with encrypted_stack(dev_env, tmp_path, key_id="test-1", queue_prefix="enc") as stack:
        yield stack


def answer(match: str, stdout: str = "", stderr: str = "", exit_code: int = 0) -> ScenarioRule:
    return ScenarioRule(match=match, stdout=stdout, stderr=stderr, exit_code=exit_code)


def files_containing(root: Path, needles: list[bytes]) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()
            and any(needle in path.read_bytes() for needle in needles)]


async def raw_history(env: WorkflowEnvironment, workflow_id: str) -> bytes:
    """Every event as protobuf bytes, through the fixture's client, which has no codec."""
    history = await env.client.get_workflow_handle(workflow_id).fetch_history()
    return b"".join(event.SerializeToString() for event in history.events)


async def test_a_session_keeps_credentials_and_output_out_of_history(
    encrypted: EncryptedStack, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)  # every log record of the worker, the activities and the client
    encrypted.port.set_scenario(Scenario(rules=[  # every simulated node, ahead of the platform answers
        answer(r"rollout status deployment/web", stdout=f'deployment "web" successfully rolled out {MARKER}\n'),
        answer(r"systemctl is-active kubelet", stdout="active\n"),
        answer(r"systemctl is-enabled kubelet", stdout="disabled\n"),
        answer(r"systemctl show kubelet --property=ExecStart",
               stdout=f"{{ path=/usr/bin/kubelet ; argv[]=/usr/bin/kubelet {MARKER} }}\n"),
    ]))
    who = f"st-{uuid.uuid4().hex[:8]}"
    started = await encrypted.labs.start(who, LAB)
    ready = await encrypted.labs.wait_ready(who, timedelta(seconds=20))
    assert ready.ready and ready.private_key and "PRIVATE KEY" in ready.private_key

    report = await encrypted.labs.check(who)  # on demand, through the workflow's `check` update
    by_name = {r.name: r for r in report.results}
    assert by_name["kubelet-active"].passed and not by_name["kubelet-enabled"].passed
    assert by_name["kubelet-binary"].passed and MARKER in by_name["kubelet-binary"].output_excerpt
    assert report.score == 2 + 1 + 3 and report.max_score == 2 + 1 + 1 + 3  # node-ready: exit 0 by default
    assert (await encrypted.labs.status(who)).phase == Phase.RUNNING  # checking did not end the lab

    await encrypted.labs.end(who)
    result = await encrypted.labs.result(who)  # decodes with the codec
    assert result.outcome == Phase.ENDED and result.checks is not None
    assert MARKER in {r.name: r for r in result.checks.results}["kubelet-binary"].output_excerpt

    raw = await raw_history(encrypted.env, started.workflow_id)
    assert b"run_setup" in raw and b"run_checks" in raw  # the search sees what is not a payload
    assert MARKER.encode() not in raw
    key_body = "".join(ready.private_key.strip().splitlines()[1:-1]).encode()
    assert b"PRIVATE KEY" not in raw and key_body[:48] not in raw
    assert b"binary/encrypted" in raw

    # Never logged, and never written to the worker's disk (its data dir: simulated cluster, sshd).
    # The first body lines of any OpenSSH key are a common header and the public key; the lines
    # after them hold this key's private half (the simulated nodes' own host keys are on disk).
    private_lines = [line.encode() for line in ready.private_key.strip().splitlines()[3:-1] if len(line) >= 20]
    assert private_lines
    assert "PRIVATE KEY" not in caplog.text
    assert not [line for line in private_lines if line.decode() in caplog.text]
    assert files_containing(tmp_path, private_lines) == []


async def test_a_failed_setup_reason_carries_the_output_only_encrypted(encrypted: EncryptedStack) -> None:
    encrypted.port.set_scenario(Scenario(rules=[
        answer(r"systemctl disable kubelet", stderr=f"Failed to disable unit: {MARKER}\n", exit_code=1),
    ]))
    who = f"st-{uuid.uuid4().hex[:8]}"
    started = await encrypted.labs.start(who, LAB)
    result = await encrypted.labs.result(who)
    assert result.outcome == Phase.FAILED
    assert "setup script 'break-kubelet' failed on node 'node01' (exit code 1)" in result.reason
    assert MARKER in result.reason
    raw = await raw_history(encrypted.env, started.workflow_id)
    assert b"SetupScriptFailed" in raw
    assert MARKER.encode() not in raw
