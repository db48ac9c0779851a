"""Clients that cannot decode (#16 item 8, #11 item 6): a client without the stack's codec key knows
the stack is encrypted BEFORE it writes anything (payload metadata is never encrypted), refuses in one
line naming the key and where keys are configured, and never shows a traceback; the CLI exits 1."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from cluster.published_images import JsonFilePublishedImages
from labrador.cli.main import app
from labrador.client import LabClient, PayloadsUndecodable
from labrador.codec import new_key_entry
from labrador.settings import PACKAGE_LABS_DIR, Settings
from labrador.temporal import data_converter
from labs.loader import load_catalog
from worker import build_port, build_worker
from workflows.models import SessionTimings

pytestmark = pytest.mark.timeout(90)
LAB = "sandbox"


@dataclass
class Encrypted:
    settings: Settings
    labs: LabClient
    env: WorkflowEnvironment

    def client_with(self, **changes: Any) -> LabClient:
        settings = self.settings.model_copy(update=changes)
        client = Client(self.env.client.service_client, namespace=self.env.client.namespace,
                        data_converter=data_converter(settings))
        return LabClient(client, settings, catalog=self.labs.catalog, published=self.labs.published,
                         timings=self.labs.timings)


@pytest.fixture
async def encrypted(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Encrypted]:
    settings = Settings(
        temporal_address=dev_env.client.service_client.config.target_host,
        task_queue=f"keyless-{uuid.uuid4().hex[:8]}", data_dir=tmp_path, cluster_backend="simulated",
        codec_keys=SecretStr(new_key_entry("stack-7")),
    )
    client = Client(dev_env.client.service_client, namespace=dev_env.client.namespace,
                    data_converter=data_converter(settings))
    labs = LabClient(client, settings, catalog=load_catalog(PACKAGE_LABS_DIR),
                     published=JsonFilePublishedImages.in_data_dir(tmp_path),
                     timings=SessionTimings(health_interval=timedelta(minutes=5)))
    port = build_port(settings)
    async with build_worker(client, settings, port):
        yield Encrypted(settings, labs, dev_env)
    await port.aclose()


async def test_a_keyless_client_refuses_every_action_before_writing_anything(encrypted: Encrypted) -> None:
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


async def test_a_wrong_key_names_the_key_the_stack_uses(encrypted: Encrypted) -> None:
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
    encrypted: Encrypted, command: list[str], tmp_path: Path
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
