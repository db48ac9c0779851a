"""The admin CLI (`labrador schedules apply`, `labrador pool ...`) against the dev server and a worker."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from cluster.models import NodeSpec
from labrador import schedules
from labrador.cli import pool_cmd
from labrador.cli.main import app
from labs.pool_sizing import PoolSizing
from tests.pool.conftest import CLASSES, CP, WORKER, PoolBed
from tests.test_tables import assert_one_line_per_row
from workflows.pool_models import POOL_REFILL_SCHEDULE_ID

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def cli_env(pool_bed: PoolBed, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    config = tmp_path / "config.yaml"
    config.write_text("max_vms: 30\n")
    yield {
        "LABRADOR_CONFIG": str(config),
        "LABRADOR_TEMPORAL_ADDRESS": pool_bed.client.service_client.config.target_host,
        "LABRADOR_TASK_QUEUE": pool_bed.task_queue,
        "LABRADOR_DATA_DIR": str(tmp_path),
    }
    try:
        await pool_bed.client.get_schedule_handle(POOL_REFILL_SCHEDULE_ID).delete()
    except Exception:
        pass


async def labrador(env: dict[str, str], *args: str) -> tuple[int, object]:
    """Run the CLI in a thread (each command runs its own event loop), return (exit code, parsed JSON)."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
    try:
        data = json.loads(result.stdout) if result.stdout.strip() else None
    except json.JSONDecodeError:
        data = result.stdout
    return result.exit_code, data


async def test_status_drain_resume_pause_through_the_cli(cli_env: dict[str, str], pool_bed: PoolBed) -> None:
    code, applied = await labrador(cli_env, "schedules", "apply", "--refill-every", "1h", "--json")
    assert code == 0 and applied[0]["schedule_id"] == POOL_REFILL_SCHEDULE_ID  # type: ignore[index]
    await pool_bed.sim.provision(NodeSpec(  # one free worker node the drain must delete
        node_id="w-free", node_class=WORKER.name, role=WORKER.role, image=WORKER.image,
        kubernetes_version="1.31.0", cpu_cores=1, memory="1126Mi", disk=WORKER.disk,
    ))
    await pool_bed.sim.mark_free("w-free")

    code, status = await labrador(cli_env, "pool", "status", "--json")
    assert code == 0, status
    assert isinstance(status, dict)
    assert status["classes"][WORKER.name]["free"] == 1
    assert set(status["classes"]) == {CP.name, WORKER.name}
    assert status["max_vms"] == 30 and status["schedule"] == {"exists": True, "paused": False}
    assert "exposed_ports_in_use" in status

    code, _ = await labrador(cli_env, "pool", "drain", "no-such-class", "--json")
    assert code == 1

    code, drained = await labrador(cli_env, "pool", "drain", WORKER.name, "--json")
    assert code == 0, drained
    assert drained == {"node_class": WORKER.name, "drained": [WORKER.name], "deleted_free_nodes": 1}

    code, status = await labrador(cli_env, "pool", "status", "--json")
    assert status["classes"][WORKER.name]["drained"] is True  # type: ignore[index]

    code, resumed = await labrador(cli_env, "pool", "resume", WORKER.name, "--json")
    assert code == 0 and resumed == {"node_class": WORKER.name, "drained": []}

    assert (await labrador(cli_env, "pool", "pause", "--json")) == (0, {"paused": True})
    for _ in range(40):  # the scheduler applies a pause asynchronously
        code, status = await labrador(cli_env, "pool", "status", "--json")
        if status["schedule"]["paused"] is True:  # type: ignore[index]
            break
        await asyncio.sleep(0.1)
    assert status["schedule"]["paused"] is True  # type: ignore[index]
    assert (await labrador(cli_env, "pool", "resume", "--json")) == (0, {"paused": False})


async def test_unreachable_temporal_exits_3(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "LABRADOR_TEMPORAL_ADDRESS": "127.0.0.1:1"}
    code, _ = await labrador(env, "pool", "status", "--json")
    assert code == 3


async def status_when(env: dict[str, str], ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """`pool status --json` once the scheduled refill (every second here) has caught up."""
    status: Any = None
    for _ in range(100):
        code, status = await labrador(env, "pool", "status", "--json")
        assert code == 0, status
        if ready(status):
            return dict(status)
        await asyncio.sleep(0.1)
    raise AssertionError(f"pool status never got there: {status}")


async def test_pool_size_overrides_the_catalog_and_status_says_why(
    cli_env: dict[str, str], pool_bed: PoolBed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The catalog declares 2..4 warm workers; every refill reads it through its plan activity.
    monkeypatch.setitem(CLASSES, WORKER.name, WORKER.model_copy(update={"pool": PoolSizing(min=2, max=4)}))
    code, applied = await labrador(cli_env, "schedules", "apply", "--refill-every", "1s", "--json")
    assert code == 0, applied
    stored = await schedules.current_refill_input(pool_bed.client)
    assert stored is not None and stored.refill_interval == timedelta(seconds=1)  # one source of truth

    status = await status_when(cli_env, lambda s: s["classes"][WORKER.name]["why"] is not None)
    worker = status["classes"][WORKER.name]
    assert (worker["target"], worker["why"], worker["min"], worker["max"]) == (2, "min", 2, 4)
    assert worker["override"] is None
    assert status["classes"][CP.name]["why"] == "no demand"
    await status_when(cli_env, lambda s: s["classes"][WORKER.name]["free"] == 2)

    # The override wins over the catalog, bound by bound.
    code, out = await labrador(cli_env, "pool", "size", WORKER.name, "--min", "3", "--json")
    assert (code, out) == (0, {"node_class": WORKER.name, "override": {"min": 3, "max": None}})
    status = await status_when(cli_env, lambda s: s["classes"][WORKER.name]["why"] == "override min")
    worker = status["classes"][WORKER.name]
    assert (worker["target"], worker["min"], worker["max"]) == (3, 3, 4)
    assert worker["override"] == {"min": 3, "max": None}

    # Refused: unknown class, min above max, nothing given, negative; nothing changed.
    assert (await labrador(cli_env, "pool", "size", "no-such-class", "--min", "1"))[0] == 1
    assert (await labrador(cli_env, "pool", "size", WORKER.name, "--min", "5", "--max", "4"))[0] == 1
    assert (await labrador(cli_env, "pool", "size", WORKER.name, "--min", "5"))[0] == 1  # above the catalog max 4
    assert (await labrador(cli_env, "pool", "size", WORKER.name))[0] == 2
    assert (await labrador(cli_env, "pool", "size", WORKER.name, "--min", "-1"))[0] == 2
    stored = await schedules.current_refill_input(pool_bed.client)
    assert stored is not None and stored.sizing[WORKER.name].min_size == 3

    code, out = await labrador(cli_env, "pool", "size", WORKER.name, "--reset", "--json")
    assert (code, out) == (0, {"node_class": WORKER.name, "override": None})
    await status_when(cli_env, lambda s: s["classes"][WORKER.name]["why"] == "min")

    # --wait: a refill at once, and what it decided.
    code, out = await labrador(cli_env, "pool", "size", WORKER.name, "--max", "1", "--min", "1", "--wait", "--json")
    assert code == 0, out
    assert out == {"node_class": WORKER.name, "override": {"min": 1, "max": 1}, "target": 1,  # type: ignore[comparison-overlap]
                   "why": "override min", "free": 1}

    # The table itself, as an operator sees it in an 80-column terminal: one line per class.
    for width in (80, 200):
        result = await asyncio.to_thread(CliRunner().invoke, app, ["pool", "status"],
                                         env={**cli_env, "COLUMNS": str(width)})
        assert result.exit_code == 0, result.output
        assert_one_line_per_row(result.stdout, width, sorted([CP.name, WORKER.name]))
        assert "min" in result.stdout  # the why column survives at 80


async def test_drain_wait_shows_the_refill_on_a_terminal_only(
    cli_env: dict[str, str], pool_bed: PoolBed, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await labrador(cli_env, "schedules", "apply", "--refill-every", "1h", "--json"))[0] == 0
    plain = await asyncio.to_thread(CliRunner().invoke, app, ["pool", "drain", WORKER.name], env=cli_env)
    assert plain.exit_code == 0 and plain.stderr == "" and plain.stdout.startswith("drained"), plain.output
    screen = io.StringIO()
    monkeypatch.setattr(pool_cmd, "err_console", Console(file=screen, force_terminal=True, color_system=None))
    shown = await asyncio.to_thread(CliRunner().invoke, app, ["pool", "drain", CP.name], env=cli_env)
    assert shown.exit_code == 0 and shown.stdout.startswith("drained"), shown.output
    assert f"draining {CP.name}: refill" in screen.getvalue(), screen.getvalue()
    assert "draining" not in shown.stdout


class _BrokenCatalog:
    """What the worker's catalog loader raises after an operator's bad edit of node-classes.yaml
    (the pool bed's plan activity reads `dict(CLASSES)`, which calls `keys()`)."""

    def keys(self) -> Any:
        from labs.loader import CatalogError, LocatedError

        raise CatalogError([LocatedError("/etc/labrador/node-classes.yaml", 91, 7, "node_classes[4].pool",
                                         "min 4 is more than max 3")])


async def test_a_catalog_the_worker_cannot_load_is_named_where_it_is_wrong(
    cli_env: dict[str, str], pool_bed: PoolBed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.pool import conftest

    monkeypatch.setattr(conftest, "CLASSES", _BrokenCatalog())
    result = await asyncio.to_thread(CliRunner().invoke, app, ["pool", "status"], env=cli_env)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "node-classes.yaml:91:7: node_classes[4].pool: min 4 is more than max 3" in result.stderr
    assert "Traceback" not in result.output and "unexpected" not in result.stderr
