"""`labrador webhooks ...`: dead letters (list, replay) and a new signing secret."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from temporalio.service import RPCError

from labrador import webhooks
from labrador.cli.common import JsonFlag, console, fail, print_json
from labrador.cli.tables import Col, print_table
from labrador.cli.temporal_cli import connected, settings_or_fail

webhooks_app = typer.Typer(help="Lab event webhooks: dead letters, replay, signing secret.", no_args_is_help=True)


def _run(action: Any) -> Any:
    settings = settings_or_fail()

    async def go() -> Any:
        async with connected(settings) as client:
            try:
                return await action(client, settings)
            except webhooks.WebhookError as exc:
                fail(str(exc))
            except RPCError as exc:
                if "not found" in exc.message.lower():
                    fail(f"webhook delivery: {exc.message}")
                raise

    return asyncio.run(go())


@webhooks_app.command("dead")
def dead(limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="at most this many")] = 100,
         as_json: JsonFlag = False) -> None:
    """Deliveries that gave up (dead letters): event, URLs and their last error."""
    letters = _run(lambda client, settings: webhooks.dead_letters(client, limit))
    if as_json:
        print_json([letter.model_dump(mode="json", exclude={"event", "urls"}) for letter in letters])
        return
    _print_dead(letters)


DEAD_COLUMNS = (
    # the delivery ID is what `webhooks replay` takes: never cut; the URL and the error may be
    Col("delivery"), Col("event", drop=2), Col("closed", drop=1), Col("URL", shrink=True),
    Col("last error", shrink=True, min_width=16),
)


def _print_dead(letters: list[Any]) -> None:
    """One line per URL that gave up, at any width (tables.py); `--json` has every field."""
    rows = []
    for letter in letters:
        closed = f"{letter.closed_at:%Y-%m-%d %H:%M:%S}" if letter.closed_at else "-"
        for url, error in (letter.dead or {"-": "-"}).items():
            rows.append([letter.workflow_id, letter.type, closed, url, error])
    print_table(console, DEAD_COLUMNS, rows, title=f"{len(letters)} dead letter(s)")


@webhooks_app.command("replay")
def replay(
    delivery: Annotated[str | None, typer.Argument(help="workflow ID of a dead letter (see `webhooks dead`)")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="every dead letter")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Send a dead-lettered event again, to the URLs that gave up."""
    if (delivery is None) == (not replay_all):
        fail("webhooks replay: give one delivery ID or --all", 2)

    async def run(client: Any, settings: Any) -> list[dict[str, str]]:
        ids = [delivery] if delivery else [letter.workflow_id for letter in await webhooks.dead_letters(client)]
        return [{"dead_letter": i, "replay": await webhooks.replay(client, settings, i)} for i in ids if i]

    out = _run(run)
    if as_json:
        print_json(out)
    else:
        for item in out:
            console.print(f"replaying {item['dead_letter']} as {item['replay']}")


@webhooks_app.command("new-secret")
def new_secret() -> None:
    """Print a new signing secret (whsec_...) for `webhook_secret`."""
    typer.echo(webhooks.new_secret())


def register(app: typer.Typer) -> None:
    app.add_typer(webhooks_app, name="webhooks")
