"""`labrador api`: serve the HTTP API (docs/api.md) until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer

from labrador.cli.common import EXIT_REFUSED, fail
from labrador.settings import SettingsError, load_settings


def api(
    address: Annotated[str | None, typer.Option("--address", help="host:port (setting api_address)")] = None,
) -> None:
    """Serve the HTTP API for the learning platform's app (bearer keys from api_keys / api_keys_file)."""
    from labrador.api.keys import KeyConfigError, keys_from_settings
    from labrador.api.server import AddressError, build_server, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings({"api_address": address})
        if not keys_from_settings(settings):
            fail("setting api_keys: no API key configured (set api_keys or api_keys_file; entries 'scope:key')")
        server = build_server(settings)
    except (SettingsError, KeyConfigError, AddressError) as exc:
        fail(str(exc))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        typer.echo(f"labrador api: http://{settings.api_address} (Temporal {settings.temporal_address})")
        await serve(server, stop)

    try:
        asyncio.run(main())
    except AddressError as exc:
        fail(str(exc), EXIT_REFUSED)
    typer.echo("labrador api: stopped")


def register(app: typer.Typer) -> None:
    app.command("api")(api)
