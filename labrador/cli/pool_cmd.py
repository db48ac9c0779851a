"""`labrador pool ...`: status, size, drain/resume a node class, pause/resume the refill schedule.

The drained set and the size overrides live in the refill schedule's argument
(PoolRefillInput.drained / .sizing), which every scheduled refill reads; `drain` adds the class and
runs a refill at once so its free nodes go now. The declared size is the catalog's `pool:` block;
an override from `pool size` wins over it (workflows/pool_sizing.py, docs/pool.md "Sizing").
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from temporalio.client import Client

from labrador import schedules
from labrador.cli.common import EXIT_UNREACHABLE, JsonFlag, console, err_console, fail, print_json
from labrador.cli.progress import PhaseLine, following, pending_activities
from labrador.cli.tables import Col, print_table
from labrador.cli.temporal_cli import connected, settings_or_fail
from labrador.pool_report import pool_status
from labrador.settings import Settings
from workflows.pool_models import ClassSizing, PoolRefillInput

pool_app = typer.Typer(help="The warm pool: status, size, drain/resume a class, pause/resume the refill.",
                       no_args_is_help=True)

ClassArg = Annotated[str, typer.Argument(help="node class, e.g. cp-1-31")]
OptionalClassArg = Annotated[
    str | None, typer.Argument(help="node class to refill again; without it: resume the refill schedule")
]
MinOption = Annotated[
    int | None, typer.Option("--min", min=0, max=100_000, help="flat floor; replaces the catalog's min and schedule")
]
MaxOption = Annotated[int | None, typer.Option("--max", min=0, max=100_000, help="cap; replaces the catalog's max")]
ResetFlag = Annotated[
    bool, typer.Option("--reset", help="drop the override: node-classes.yaml `pool:` applies again")
]
WaitFlag = Annotated[bool, typer.Option("--wait/--no-wait", help="run a refill now and report what it deleted")]


def _bounds(cls: dict[str, Any]) -> str:
    low, high = cls.get("min"), cls.get("max")
    text = "-" if low is None or high is None else f"{low}..{high}"
    return text + ("*" if cls.get("override") else "")


POOL_COLUMNS = (
    Col("class"), Col("free"), Col("prov"), Col("claimed"), Col("target"), Col("why", shrink=True, min_width=14),
    Col("min..max", drop=1), Col("stale", drop=3), Col("drained", drop=2), Col("image", shrink=True, drop=4),
)


def _print_status(data: dict[str, Any]) -> None:
    rows = [
        [cls["node_class"], str(cls["free"]), str(cls["provisioning"]), str(cls["claimed"]),
         "-" if cls["target"] is None else str(cls["target"]), cls.get("why") or "-", _bounds(cls),
         str(cls["stale"]), "yes" if cls["drained"] else "", cls["image"]]
        for cls in data["classes"].values()
    ]
    print_table(console, POOL_COLUMNS, rows, title="warm pool")
    if any(cls.get("override") for cls in data["classes"].values()):
        console.print("* size override from `labrador pool size` (wins over node-classes.yaml `pool:`)")
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
    """Per class: free, provisioning, claimed, target and why, min..max, stale; capacity; the queue."""
    data = _run(pool_status)
    if as_json:
        print_json(data)
    else:
        _print_status(data)


async def _known_classes(client: Client, settings: Settings) -> set[str]:
    data = await pool_status(client, settings)
    return set(data["classes"])


@pool_app.command("size")
def size(
    node_class: ClassArg,
    min_size: MinOption = None,
    max_size: MaxOption = None,
    reset: ResetFlag = False,
    now: Annotated[bool, typer.Option("--wait", help="run a refill now and report the new target")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Override the warm-pool size of CLASS (wins over node-classes.yaml `pool:`); applied by the next refill."""
    if reset and (min_size is not None or max_size is not None):
        raise typer.BadParameter("--reset drops the override: give it alone, without --min/--max", param_hint="--reset")
    if not reset and min_size is None and max_size is None:
        raise typer.BadParameter("give --min N and/or --max N, or --reset", param_hint="--min/--max")
    if min_size is not None and max_size is not None and min_size > max_size:
        fail(f"pool size: --min {min_size} is more than --max {max_size}")

    async def run(client: Client, settings: Settings) -> dict[str, Any]:
        if await schedules.current_refill_input(client) is None:
            raise schedules.ScheduleMissing("the pool refill schedule does not exist: run `labrador schedules apply`")
        classes = (await pool_status(client, settings))["classes"]
        if node_class not in classes:
            fail(f"pool size: node class {node_class!r} is unknown (known: {', '.join(sorted(classes))})")

        def edit(current: PoolRefillInput) -> PoolRefillInput:
            sizing = dict(current.sizing)
            if reset:
                sizing.pop(node_class, None)
            else:
                old = sizing.get(node_class, ClassSizing())
                sizing[node_class] = old.model_copy(update={
                    "min_size": min_size if min_size is not None else old.min_size,
                    "max_size": max_size if max_size is not None else old.max_size,
                })
            return current.model_copy(update={"sizing": sizing})

        if not reset:
            current = (await schedules.current_refill_input(client) or PoolRefillInput()).sizing.get(node_class)
            low = min_size if min_size is not None else (current.min_size if current else None)
            # Without --max the cap stays what the last refill used (the worker's catalog, or an override).
            high = max_size if max_size is not None else (
                current.max_size if current and current.max_size is not None else classes[node_class].get("max"))
            if low is not None and high is not None and low > high:
                fail(f"pool size: --min {low} is more than the max {high} of {node_class}: give --max too")
        updated = await schedules.edit_refill_input(client, edit)
        override = updated.sizing.get(node_class)
        out: dict[str, Any] = {
            "node_class": node_class,
            "override": None if override is None else {"min": override.min_size, "max": override.max_size},
        }
        if now:
            handle = await schedules.start_refill_now(client)
            with PhaseLine(err_console, enabled=not as_json) as line:
                line.update(f"sizing {node_class}: refill started")
                result = await schedules.wait_for_refill(handle)
            report = result.classes.get(node_class)
            if report is not None:
                out.update(target=report.target, why=report.target_reason, free=report.free)
        return out

    out = _run(run)
    if as_json:
        print_json(out)
        return
    override = out["override"]
    when = "applied now" if "target" in out else "applied by the next refill"
    if override is None:
        console.print(f"{node_class}: size override dropped; node-classes.yaml `pool:` {when}")
    else:
        shown = ", ".join(f"{key} {value}" for key, value in override.items() if value is not None)
        console.print(f"{node_class}: size override {shown} (wins over node-classes.yaml); {when}")
    if "target" in out:
        console.print(f"target {out['target']} ({out['why']}), {out['free']} free")


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
            handle = await schedules.start_refill_now(client)

            async def phase() -> str:
                running = await pending_activities(handle)
                return f"draining {node_class}: refill running, {running} node operation(s) in flight"

            with PhaseLine(err_console, enabled=not as_json) as line:
                line.update(f"draining {node_class}: refill started")
                async with following(line, phase):
                    result = await schedules.wait_for_refill(handle)
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
