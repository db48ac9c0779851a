"""Progress where people wait: `lab start --wait` shows the phase as it changes on a terminal, and
nothing but its answer on stdout under --json or without a terminal (real sessions, dev server)."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from labrador.cli import lab_cmd
from labrador.cli.main import app
from labrador.cli.progress import PhaseLine, describe_phase
from tests.session.conftest import Stack
from workflows.models import BoundNode, LabStatus, Phase

pytestmark = pytest.mark.timeout(90)
LAB = "kubelet-broken-worker"  # two nodes, both cold (no pool here): provisioning is visible


def env_of(stack: Stack) -> dict[str, str]:
    return {
        "LABRADOR_TEMPORAL_ADDRESS": stack.settings.temporal_address,
        "LABRADOR_TASK_QUEUE": stack.settings.task_queue,
        "LABRADOR_DATA_DIR": str(stack.settings.data_dir),
        "LABRADOR_CONFIG": str(stack.settings.data_dir / "no-config.yaml"),
    }


async def cli(stack: Stack, *args: str) -> tuple[int, str, str]:
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env_of(stack))
    return result.exit_code, result.stdout, result.stderr


async def test_start_wait_shows_phases_on_a_terminal_and_nothing_extra_otherwise(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    (stack.settings.data_dir / "no-config.yaml").write_text("{}\n")
    stack.settings = stack.settings.model_copy(update={"sim_boot_seconds": 1.5})
    await stack.start_worker()

    # --json, no terminal: stdout is the answer and only the answer, stderr is empty.
    code, out, err = await cli(stack, "lab", "start", "--student", "quiet", "--lab", LAB, "--wait", "--json")
    assert code == 0, err
    assert json.loads(out)["ready"]["port"] > 0 and err == ""

    # No terminal, no --json: the started/ssh lines, no progress.
    code, out, err = await cli(stack, "lab", "start", "--student", "plain", "--lab", LAB, "--wait")
    assert code == 0, err
    assert out.startswith("started lab") and "ssh -i" in out and "provisioning" not in out + err

    # A terminal (stderr is a TTY): the phases as they change, finished ones kept as lines.
    screen = io.StringIO()
    monkeypatch.setattr(lab_cmd, "err_console", Console(file=screen, force_terminal=True, width=100, color_system=None))
    code, out, err = await cli(stack, "lab", "start", "--student", "watched", "--lab", LAB, "--wait")
    assert code == 0, err
    shown = screen.getvalue()
    # Polled every half second: the short phases (claiming, wiring, setting up) may pass between two
    # polls; the 1.5 s boot never does, and a finished phase stays as a line.
    assert "provisioning: 0/2 nodes ready" in shown and "✓ provisioning" in shown, shown
    assert "ssh -i" in out and "provisioning" not in out  # stdout keeps only the answer

    for student in ("quiet", "plain", "watched"):
        await stack.labs.end(student)


def test_phase_lines_say_what_a_wait_is_at() -> None:
    nodes = [BoundNode(name=n, node_id=f"id-{n}", role="worker", warm=False) for n in ("controlplane", "node01")]
    base = LabStatus(student_id="a", lab_name="l", phase=Phase.QUEUED, started_at="2026-12-01T00:00:00Z",
                     queue_position=3)
    assert describe_phase(base) == "queued for capacity (position 3)"
    provisioning = base.model_copy(update={"phase": Phase.PROVISIONING, "nodes": nodes, "nodes_ready": 1})
    assert describe_phase(provisioning) == "provisioning: 1/2 nodes ready"
    assert describe_phase(base.model_copy(update={"phase": Phase.EXPOSING})) == "exposing SSH"

    silent = io.StringIO()  # not a terminal: nothing at all
    with PhaseLine(Console(file=silent)) as line:
        line.update("claiming warm nodes")
    assert silent.getvalue() == ""
    off = io.StringIO()  # a terminal, but --json: nothing
    with PhaseLine(Console(file=off, force_terminal=True), enabled=False) as line:
        line.update("claiming warm nodes")
    assert off.getvalue() == ""
    tty = io.StringIO()
    with PhaseLine(Console(file=tty, force_terminal=True, width=80)) as line:
        line.update("claiming warm nodes")
        line.update("provisioning: 0/2 nodes ready")
        line.update("provisioning: 1/2 nodes ready")  # same phase: no finished line
        line.update("setting up the lab")
    assert tty.getvalue().count("✓ ") == 3 and "✓ claiming warm nodes" in tty.getvalue()
    assert "✓ setting up the lab" in tty.getvalue()  # the last phase is kept when the wait ends
