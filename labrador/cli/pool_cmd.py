"""`labrador pool ...`: status, drain/resume a node class, pause/resume the refill schedule.

The drained set lives in the refill schedule's argument (PoolRefillInput.drained), which every
scheduled refill reads; `drain` adds the class and runs a refill at once so its free nodes go now.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.table import Table
from temporalio.client import Client

from labrador import schedules
from labrador.cli.common import EXIT_UNREACHABLE, JsonFlag, console, fail, print_json
from labrador.cli.temporal_cli import connected, settings_or_fail
from labrador.pool_report import pool_status
from labrador.settings import Settings
from workflows.pool_models import (
    PoolRefillInput,
)

pool_app = typer.Typer(help="The warm pool: status, drain/resume a class, pause/resume the refill.",
                       no_args_is_help=True)

ClassArg = Annotated[str, typer.Argument(help="node class, e.g. cp-1-31")]
OptionalClassArg = Annotated[
    str | None, typer.Argument(help="node class to refill again; without it: resume the refill schedule")
]
WaitFlag = Annotated[bool, typer.Option("--wait/--no-wait", help="run a refill now and report what it deleted")]


def _print_status(data: dict[str, Any]) -> None:
    table = Table(title="warm pool")
    for column in ("class", "free", "provisioning", "claimed", "target", "stale", "drained", "image"):
        table.add_column(column)
    for cls in data["classes"].values():
        target = "-" if cls["target"] is None else str(cls["target"])
        table.add_row(cls["node_class"], str(cls["free"]), str(cls["provisioning"]), str(cls["claimed"]), target,
                      str(cls["stale"]), "yes" if cls["drained"] else "", cls["image"])
    console.print(table)
    schedule = data["schedule"]
    state = "missing (run `labrador schedules apply`)" if not schedule["exists"] else (
        "paused" if schedule["paused"] else "running")
    console.print(f"refill schedule: {state}")
    console.print(f"VMs: {data['total_vms']}/{data['max_vms']}, memory: "
                  f"{data['total_memory_bytes'] / 2**30:.1f}/{data['max_memory_bytes'] / 2**30:.1f} GiB")
    capacity = data["exposed_ports_capacity"]
    console.print(f"NodePorts: {data['exposed_ports_in_use']} in use"
                  + (f" of {capacity}" if capacity is not None else ""))
    if data["queue"]:
        console.print(f"capacity queue: {len(data['queue'])} session(s) waiting")


def _run(coroutine_factory: Any) -> Any:
    settings = settings_or_fail()

    async def run() -> Any:
        async with connected(settings) as client:
            return await coroutine_factory(client, settings)

    try:
        return asyncio.run(run())
    except schedules.ScheduleMissing as exc:
        fail(str(exc))
    except TimeoutError as exc:
        fail(str(exc), EXIT_UNREACHABLE)


@pool_app.command("status")
def status(as_json: JsonFlag = False) -> None:
    """Per class: free, provisioning, claimed, target, stale; VM, memory and NodePort capacity; the queue."""
    data = _run(pool_status)
    if as_json:
        print_json(data)
    else:
        _print_status(data)


async def _known_classes(client: Client, settings: Settings) -> set[str]:
    data = await pool_status(client, settings)
    return set(data["classes"])


@pool_app.command("drain")
def drain(node_class: ClassArg, wait: WaitFlag = True, as_json: JsonFlag = False) -> None:
    """Delete the free nodes of CLASS and stop refilling it until `pool resume CLASS`."""

    async def run(client: Client, settings: Settings) -> dict[str, Any]:
        if await schedules.current_refill_input(client) is None:
            raise schedules.ScheduleMissing("the pool refill schedule does not exist: run `labrador schedules apply`")
        known = await _known_classes(client, settings)
        if node_class not in known:
            fail(f"pool drain: node class {node_class!r} is unknown (known: {', '.join(sorted(known))})")
        updated = await schedules.edit_refill_input(
            client, lambda i: i.model_copy(update={"drained": sorted({*i.drained, node_class})})
        )
        out: dict[str, Any] = {"node_class": node_class, "drained": updated.drained}
        if wait:
            result = await schedules.trigger_refill_and_wait(client)
            report = result.classes.get(node_class)
            out["deleted_free_nodes"] = report.deleted_drained if report else 0
        return out

    out = _run(run)
    if as_json:
        print_json(out)
    else:
        deleted = f"; {out['deleted_free_nodes']} free node(s) deleted" if "deleted_free_nodes" in out else ""
        console.print(f"drained {node_class}: not refilled until `labrador pool resume {node_class}`{deleted}")


@pool_app.command("resume")
def resume(node_class: OptionalClassArg = None, as_json: JsonFlag = False) -> None:
    """With CLASS: refill that class again. Without: resume the paused refill schedule."""

    async def run(client: Client, settings: Settings) -> dict[str, Any]:
        if node_class is None:
            await schedules.set_paused(client, False, "resumed by labrador pool resume")
            return {"paused": False}
        updated: PoolRefillInput = await schedules.edit_refill_input(
            client, lambda i: i.model_copy(update={"drained": sorted(set(i.drained) - {node_class})})
        )
        return {"node_class": node_class, "drained": updated.drained}

    out = _run(run)
    if as_json:
        print_json(out)
    elif node_class is None:
        console.print("refill schedule resumed")
    else:
        console.print(f"{node_class} is refilled again (drained: {', '.join(out['drained']) or 'none'})")


@pool_app.command("pause")
def pause(as_json: JsonFlag = False) -> None:
    """Pause the refill schedule (no refill, no rollover, no leak collection) until `pool resume`."""

    async def run(client: Client, settings: Settings) -> dict[str, Any]:
        await schedules.set_paused(client, True, "paused by labrador pool pause")
        return {"paused": True}

    out = _run(run)
    if as_json:
        print_json(out)
    else:
        console.print("refill schedule paused (`labrador pool resume` to resume)")


def register(app: typer.Typer) -> None:
    app.add_typer(pool_app, name="pool")
