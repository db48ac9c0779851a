"""Clients that cannot decode (#16 item 8, #11 item 6): a client without the stack's codec key knows
the stack is encrypted BEFORE it writes anything (payload metadata is never encrypted), refuses in one
line naming the key and where keys are configured, and never shows a traceback; the CLI exits 1."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from labrador.cli.main import app
from labrador.client import PayloadsUndecodable
from labrador.codec import new_key_entry
from tests.encrypted_stack import EncryptedStack, encrypted_stack

pytestmark = pytest.mark.timeout(90)
LAB = "sandbox"


@pytest.fixture
async def encrypted(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[EncryptedStack]:
    async with encrypted_stack(dev_env, tmp_path, key_id="stack-7", queue_prefix="keyless") as stack:
        yield stack


async def test_a_keyless_client_refuses_every_action_before_writing_anything(encrypted: EncryptedStack) -> None:
    running = f"st-{uuid.uuid4().hex[:8]}"
    await encrypted.labs.start(running, LAB, wait=timedelta(seconds=20))  # the stack has stored payloads now
    keyless = encrypted.client_with(codec_keys=None)
    newcomer = f"st-{uuid.uuid4().hex[:8]}"
    with pytest.raises(PayloadsUndecodable) as caught:
        await keyless.start(newcomer, LAB, wait=timedelta(seconds=5))
    message = str(caught.value)
    assert "'stack-7'" in message and "codec_keys_file" in message and "\n" not in message
    with pytest.raises(RPCError):  # nothing was started: no plaintext input in any history
        await encrypted.env.client.get_workflow_handle(f"lab-session/{newcomer}").describe()
    before = len((await encrypted.env.client.get_workflow_handle(f"lab-session/{running}").fetch_history()).events)
    for action in (keyless.status, keyless.check, keyless.extend, keyless.end, keyless.wait_ready):
        with pytest.raises(PayloadsUndecodable, match="'stack-7'"):
            await action(running)
    after = len((await encrypted.env.client.get_workflow_handle(f"lab-session/{running}").fetch_history()).events)
    assert after == before, "a refused client wrote nothing into the running lab's history"
    await encrypted.labs.end(running)


async def test_a_wrong_key_names_the_key_the_stack_uses(encrypted: EncryptedStack) -> None:
    running = f"st-{uuid.uuid4().hex[:8]}"
    await encrypted.labs.start(running, LAB)
    other = encrypted.client_with(codec_keys=SecretStr(new_key_entry("other-1")))
    with pytest.raises(PayloadsUndecodable, match="'stack-7', which is not among the configured keys"):
        await other.status(running)
    same_id = encrypted.client_with(codec_keys=SecretStr(new_key_entry("stack-7")))  # same id, other bytes
    with pytest.raises(PayloadsUndecodable, match="does not decrypt"):
        await same_id.status(running)
    await encrypted.labs.end(running)


@pytest.mark.parametrize("command", [["lab", "status"], ["lab", "check"], ["lab", "extend"], ["lab", "end"],
                                     ["lab", "start", "--lab", LAB, "--wait"], ["pool", "status"]])
async def test_the_cli_without_the_key_prints_one_line_and_exits_1(
    encrypted: EncryptedStack, command: list[str], tmp_path: Path
) -> None:
    running = f"st-{uuid.uuid4().hex[:8]}"
    await encrypted.labs.start(running, LAB)
    args = [*command, "--student", running] if command[0] == "lab" else command
    env = {"LABRADOR_TEMPORAL_ADDRESS": encrypted.settings.temporal_address,
           "LABRADOR_TASK_QUEUE": encrypted.settings.task_queue, "LABRADOR_DATA_DIR": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path)}
    import asyncio

    result = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
    if command == ["pool", "status"] and result.exit_code == 0:
        pytest.skip("pool status read nothing encrypted on this task queue")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output and len(lines) == 1 and "codec" in lines[0], result.output
    await encrypted.labs.end(running)
