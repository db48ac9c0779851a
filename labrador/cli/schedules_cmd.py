"""`labrador schedules apply`: create or update the Temporal Schedules (pool refill, image rebuilds)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

import typer

from labrador.cli.common import JsonFlag, console, print_json
from labrador.cli.temporal_cli import connected, settings_or_fail
from labrador.schedules import DEFAULT_REFILL_EVERY, apply_schedules
from labs.models import parse_duration

schedules_app = typer.Typer(help="Temporal Schedules: the pool refill and the image rebuilds.", no_args_is_help=True)


@schedules_app.command("apply")
def apply(
    refill_every: Annotated[
        str, typer.Option("--refill-every", help="interval of the pool refill, e.g. 1m, 30s")
    ] = "1m",
    as_json: JsonFlag = False,
) -> None:
    """Create or update every schedule (idempotent; keeps drained classes and a pause)."""
    try:
        every = parse_duration(refill_every)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--refill-every") from None
    if not isinstance(every, timedelta) or every < timedelta(seconds=1):
        raise typer.BadParameter(f"{refill_every!r} must be at least 1s", param_hint="--refill-every")
    settings = settings_or_fail()

    async def run() -> list[dict[str, str]]:
        async with connected(settings) as client:
            applied = await apply_schedules(client, settings, refill_every=every or DEFAULT_REFILL_EVERY)
        return [vars(a) for a in applied]

    applied = asyncio.run(run())
    if as_json:
        print_json(applied)
        return
    for item in applied:
        console.print(f"{item['outcome']}: {item['schedule_id']} ({item['description']})")


def register(app: typer.Typer) -> None:
    app.add_typer(schedules_app, name="schedules")
