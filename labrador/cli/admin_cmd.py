"""`labrador admin end`: end every lab of a lab name, of a node class, or all (a BulkEnd workflow).

`--dry-run` lists what would be ended (from Visibility, nothing is changed); `--force` terminates
instead of signalling (stuck sessions; leak collection then removes what they held).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from labrador import admin
from labrador.cli.common import EXIT_UNREACHABLE, JsonFlag, console, fail, print_json
from labrador.cli.tables import Col, print_table
from labrador.client import LabClient, LabError, TemporalUnreachable
from labrador.settings import SettingsError, load_settings

admin_app = typer.Typer(help="Admin bulk actions: end labs by lab, node class, or all.", no_args_is_help=True)


@admin_app.command("end")
def end(
    reason: Annotated[str, typer.Option("--reason", help="the reason the students see")],
    lab: Annotated[str | None, typer.Option("--lab", help="every running session of this lab")] = None,
    node_class: Annotated[str | None, typer.Option("--node-class", help="every session of labs using it")] = None,
    every: Annotated[bool, typer.Option("--all", help="every running session")] = False,
    student: Annotated[str | None, typer.Option("--student", help="only this student's session")] = None,
    force: Annotated[bool, typer.Option("--force", help="terminate (stuck sessions) instead of ending")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be ended, change nothing")] = False,
    parallelism: Annotated[int, typer.Option("--parallelism", min=1, max=50, help="sessions ended at once")] = 10,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the bulk workflow's totals")] = True,
    as_json: JsonFlag = False,
) -> None:
    """End running labs in bulk, with a reason the students see (a BulkEnd workflow in the Web UI)."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        fail(str(exc))

    async def go() -> dict[str, Any]:
        labs = await LabClient.connect(settings)
        chosen = admin.selector(labs.catalog, lab=lab, node_class=node_class, every=every, student_id=student)
        if dry_run:
            out: dict[str, Any] = {"dry_run": True, "selector": chosen.description, "sessions": [], "count": 0}
            token = None
            while True:
                page = await admin.preview(labs.client, chosen, page_token=token)
                out["count"] = page.count
                out["sessions"] += [s.model_dump(mode="json") for s in page.sessions]
                token = page.next_page_token
                if token is None:
                    return out
        workflow_id = await admin.start_bulk_end(labs.client, settings, chosen, reason, force=force,
                                                 parallelism=parallelism)
        out = {"workflow_id": workflow_id, "selector": chosen.description}
        if wait:
            await labs.client.get_workflow_handle(workflow_id).result()
            out.update((await admin.bulk_status(labs.client, workflow_id)).model_dump(mode="json"))
        return out

    try:
        out = asyncio.run(go())
    except TemporalUnreachable as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    except LabError as exc:
        fail(str(exc))
    if as_json:
        print_json(out)
    elif dry_run:
        _print_dry_run(out)
    else:
        result = out.get("result") or {}
        totals = f": {result.get('ended', 0)} ended, {result.get('failed', 0)} failed" if result else " (started)"
        console.print(f"{'force-end' if force else 'end'} {out['selector']} as {out['workflow_id']}{totals}")
        for failure in result.get("failures", []):
            console.print(f"  failed: {failure}")


DRY_RUN_COLUMNS = (
    Col("student", shrink=True), Col("lab", shrink=True, min_width=16), Col("phase"), Col("started", drop=1),
)


def _print_dry_run(out: dict[str, Any]) -> None:
    """What `--dry-run` found: one line per session at any width (tables.py), `--json` for all."""
    print_table(console, DRY_RUN_COLUMNS, [
        [item["student_id"] or "?", item["lab"] or "?", item["phase"] or "?",
         str(item["started_at"] or "-")[:19].replace("T", " ")]
        for item in out["sessions"]
    ], title=f"{out['count']} session(s) would be ended ({out['selector']})")


def register(app: typer.Typer) -> None:
    app.add_typer(admin_app, name="admin")
