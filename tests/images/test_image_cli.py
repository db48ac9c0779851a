"""`labrador image build|list` against the dev server, a worker in this process and a real registry."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path

import pytest
from rich.console import Console
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from typer.testing import CliRunner

from activities.image_activities import ImageActivities
from labrador.cli import image_cmd
from labrador.cli.main import app
from labrador.settings import load_settings
from tests.images.servers import Registry, free_port, make_qcow2_disk
from workflows.image_build import ImageBuildWorkflow


def env_for(tmp_path: Path, registry: Registry, address: str, queue: str) -> dict[str, str]:
    return {
        "LABRADOR_TEMPORAL_ADDRESS": address, "LABRADOR_TASK_QUEUE": queue, "LABRADOR_DATA_DIR": str(tmp_path / "data"),
        "LABRADOR_REGISTRY": registry.host, "LABRADOR_REGISTRY_AUTH": "none",
        "LABRADOR_IMAGE_WORK_DIR": str(tmp_path / "work"), "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }


def invoke(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, args, env=env)
    crash = "" if result.exception is None or isinstance(result.exception, SystemExit) else repr(result.exception)
    return result.exit_code, result.stdout, result.stderr + crash


@pytest.mark.parametrize(("args", "message"), [
    (["--class", "cp-v1-31"], "give exactly one source"),
    (["--class", "cp-v1-31", "--from-vm", "a/b", "--from-pvc", "c/d"], "--from-vm and --from-pvc"),
    (["--class", "no-such-class", "--from-vm", "a/b"], "--class: 'no-such-class' is not a node class"),
    (["--class", "cp-v1-31", "--from-vm", "just-a-name"], "--from-vm: 'just-a-name' is not NAMESPACE/NAME"),
    (["--class", "cp-v1-31", "--from-disk", "/no/such/disk.img"], "--from-disk"),
    (["--class", "worker-v1-31-pvc", "--golden"], "has no build recipe"),
    (["--class", "cp-v1-31", "--from-vm", "a/b", "--registry", "https://reg.example/x"],
     "(from --registry): 'https://reg.example/x' is not a registry host[:port]"),
])
def test_bad_input_is_refused_with_the_flag_named(tmp_path: Path, registry: Registry, args: list[str],
                                                  message: str) -> None:
    code, _, err = invoke(["image", "build", *args], env_for(tmp_path, registry, "127.0.0.1:1", "q"))
    assert code == 1
    assert message in err and err.count("\n") == 1


def test_unreachable_temporal_exits_3(tmp_path: Path, registry: Registry) -> None:
    disk = make_qcow2_disk(tmp_path / "d.qcow2")
    code, _, err = invoke(["image", "build", "--class", "cp-v1-31", "--from-disk", str(disk), "--json"],
                          env_for(tmp_path, registry, f"127.0.0.1:{free_port()}", "q"))
    assert code == 3 and "unreachable" in err


@pytest.mark.timeout(90)
async def test_build_json_names_reference_and_digest_and_list_shows_it(
        dev_env: WorkflowEnvironment, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    env = env_for(tmp_path, registry, dev_env.client.service_client.config.target_host, queue)
    settings = load_settings(environ=env, use_dev_stack=False)
    acts = ImageActivities(settings, f"{queue}-pinned")
    disk = make_qcow2_disk(tmp_path / "d.qcow2")
    async with Worker(dev_env.client, task_queue=queue, workflows=[ImageBuildWorkflow], activities=acts.shared()), \
            Worker(dev_env.client, task_queue=acts.worker_queue_name, activities=acts.pinned()):
        code, out, err = await asyncio.to_thread(
            invoke, ["image", "build", "--class", "cp-v1-31", "--from-disk", str(disk), "--json"], env)
        # Again for a person: progress on stderr, the outcome on stdout (same tag today, same digest).
        code_h, out_h, err_h = await asyncio.to_thread(
            invoke, ["image", "build", "--class", "cp-v1-31", "--from-disk", str(disk)], env)
        # On a terminal: the steps as they change (live bars on stderr); stdout the same outcome.
        screen = io.StringIO()
        terminal = Console(file=screen, force_terminal=True, width=100, color_system=None)
        monkeypatch.setattr(image_cmd, "err_console", terminal)
        code_t, out_t, err_t = await asyncio.to_thread(
            invoke, ["image", "build", "--class", "cp-v1-31", "--from-disk", str(disk)], env)
    assert code_t == 0, err_t
    assert "digest sha256:" in out_t and "━" not in out_t
    shown = screen.getvalue()
    assert "building cp-v1-31 from disk" in shown and "picking a worker" in shown and "━" in shown, shown
    assert code == 0, err
    assert err == ""  # --json: nothing but the answer, on stdout
    result = json.loads(out)
    assert code_h == 0, err_h
    assert f"digest {result['digest']}" in out_h and "building cp-v1-31 from disk" in err_h
    assert result["reference"] == f"{registry.host}/labrador/node-images@{result['digest']}"
    assert result["tagged"].startswith(f"{registry.host}/labrador/node-images:cp-v1-31-1.31.4-")

    code, out, err = invoke(["image", "list", "--json"], env)
    assert code == 0, err
    rows = {row["node_class"]: row for row in json.loads(out)}
    assert rows["cp-v1-31"]["published"] == rows["cp-v1-31"]["effective_image"] == result["reference"]
    assert rows["cp-v1-32"]["published"] is None
    assert rows["cp-v1-32"]["effective_image"] == rows["cp-v1-32"]["base_image"]
