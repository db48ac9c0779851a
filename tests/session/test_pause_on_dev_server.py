"""Pause and resume on the real stack: dev server, production worker, simulated cluster, real SSH."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import asyncssh
import pytest

from cluster.models import NodePhase
from workflows.models import LabSessionResult, Phase, WaitReadyResult

from .conftest import Stack

pytestmark = pytest.mark.timeout(60)


async def ssh_answers(ready: WaitReadyResult) -> bool:
    assert ready.endpoint is not None and ready.private_key is not None
    key = asyncssh.import_private_key(ready.private_key)
    try:
        async with asyncssh.connect(ready.endpoint.host, ready.endpoint.port, username="root", client_keys=[key],
                                    known_hosts=None, connect_timeout=5) as conn:
            return (await conn.run("true")).exit_status == 0
    except (OSError, asyncssh.Error):
        return False


async def test_a_paused_lab_refuses_ssh_and_answers_again_after_resume(stack: Stack) -> None:
    cluster = await stack.start_worker()
    who = f"st-{uuid.uuid4().hex[:8]}"
    await stack.labs.start(who, "networkpolicy-db")
    ready = await stack.labs.wait_ready(who, timedelta(seconds=15))
    assert ready.ready and await ssh_answers(ready)
    node_ids = [n.node_id for n in (await stack.labs.status(who)).nodes]

    paused = await stack.labs.pause(who)
    assert not await ssh_answers(ready)  # the student's SSH is closed
    assert {(await cluster.node_status(n)).phase for n in node_ids} == {NodePhase.PAUSED}
    status = await stack.labs.status(who)
    assert status.phase == Phase.PAUSED and status.pause_expires_at == paused.expires_at
    async with asyncio.timeout(10):  # visibility is eventually consistent
        while True:
            if who in {s.student_id for s in await stack.labs.list("paused")}:
                break
            await asyncio.sleep(0.1)

    resumed = await stack.labs.resume(who)
    again = await stack.labs.wait_ready(who, timedelta(seconds=5))
    assert again.ready and again.endpoint == resumed.endpoint and again.deadline == resumed.deadline
    assert await ssh_answers(again)
    for node_id in node_ids:  # every guest clock was stepped over SSH
        assert any(c.startswith("date -u -s @") for c in cluster.commands(node_id))
    assert (await stack.labs.status(who)).phase == Phase.RUNNING

    await stack.labs.end(who)
    result: LabSessionResult = await stack.labs.result(who)
    assert (result.outcome, result.reason) == (Phase.ENDED, "ended by student")
    assert "paused" in result.phase_seconds
    assert (await cluster.inventory()).nodes == []


async def test_reset_gives_fresh_nodes_and_new_ssh_details(stack: Stack) -> None:
    cluster = await stack.start_worker()
    who = f"st-{uuid.uuid4().hex[:8]}"
    await stack.labs.start(who, "kubelet-broken-worker")
    ready = await stack.labs.wait_ready(who, timedelta(seconds=15))
    before = await stack.labs.status(who)
    old_ids = {n.node_id for n in before.nodes}

    done = await stack.labs.reset(who)
    new_ids = {n.node_id for n in done.nodes}
    assert new_ids.isdisjoint(old_ids)
    held = {n.node_id for n in (await cluster.inventory()).nodes}
    assert held == new_ids  # the old nodes are deleted
    again = await stack.labs.wait_ready(who, timedelta(seconds=5))
    assert again.ready and again.endpoint == done.endpoint and again.endpoint != ready.endpoint
    assert not await ssh_answers(ready) and await ssh_answers(again)  # the old endpoint is gone
    for node_id in new_ids:  # the platform setup ran again on the new nodes
        assert cluster.commands(node_id)
    status = await stack.labs.status(who)
    assert status.phase == Phase.RUNNING and status.resets_used == 1

    await stack.labs.end(who)
    result: LabSessionResult = await stack.labs.result(who)
    assert result.outcome == Phase.ENDED and "resetting" in result.phase_seconds
    assert (await cluster.inventory()).nodes == []


async def test_the_cli_pauses_resumes_and_resets_a_lab(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    from typer.testing import CliRunner

    from labrador.cli.main import app

    await stack.start_worker()
    who = f"st-{uuid.uuid4().hex[:8]}"
    await stack.labs.start(who, "sandbox")
    assert (await stack.labs.wait_ready(who, timedelta(seconds=15))).ready
    home = tmp_path_factory.mktemp("home")
    env = {
        "LABRADOR_TEMPORAL_ADDRESS": stack.settings.temporal_address, "LABRADOR_TASK_QUEUE": stack.settings.task_queue,
        "LABRADOR_DATA_DIR": str(stack.settings.data_dir), "LABRADOR_CLUSTER_BACKEND": "simulated",
        "XDG_STATE_HOME": str(home), "HOME": str(home), "COLUMNS": "300",
    }

    async def cli(*args: str) -> tuple[int, str]:
        result = await asyncio.to_thread(CliRunner().invoke, app, ["lab", *args, "--student", who], env=env)
        return result.exit_code, " ".join(result.output.split())

    code, out = await cli("pause")
    assert code == 0 and "paused at" in out and f"labrador lab resume --student {who}" in out
    code, out = await cli("pause")
    assert code == 1 and "pause: the lab is not running (phase paused)" in out and "Traceback" not in out
    code, out = await cli("resume")
    assert code == 0 and "resumed after" in out and "ssh -i " in out
    code, out = await cli("reset")
    assert code == 0 and "reset: fresh nodes (0 resets left)" in out and "ssh -i " in out
    key_file = out.split("ssh -i ")[1].split()[0]
    mode, text = await asyncio.to_thread(lambda: (Path(key_file).stat().st_mode & 0o777, Path(key_file).read_text()))
    assert mode == 0o600 and "PRIVATE KEY" in text  # the key file of the new session, written like start --wait
    code, out = await cli("reset")
    assert code == 1 and "reset: no resets left (1 of 1 used)" in out
    await stack.labs.end(who)
    await stack.labs.result(who)
