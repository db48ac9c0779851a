"""`labrador codec-server`: the Temporal Web UI's remote codec endpoint, and `labrador codec-key`."""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from pathlib import Path
from typing import Annotated

import typer

from labrador.cli.common import EXIT_REFUSED, JsonFlag, fail, port_option, print_json


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def codec_server(
    host: Annotated[str, typer.Option(help="address to bind; keep loopback unless behind the operators' auth")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on", callback=port_option)] = 8081,
    ui_origin: Annotated[
        list[str] | None, typer.Option("--ui-origin", help="Web UI origin allowed by CORS (repeatable)")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="labrador config file")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Serve /encode and /decode for the Temporal Web UI (Settings > Data Encoder, or the UI server's
    codec endpoint setting) with the configured codec keys. Anyone who reaches it can read payloads."""
    from labrador.codec import CodecError, codec_from_settings
    from labrador.codec_server import DEFAULT_UI_ORIGINS, start
    from labrador.settings import SettingsError, load_settings

    try:
        settings = load_settings(config_file=config)
        codec = codec_from_settings(settings)
    except (SettingsError, CodecError) as exc:
        fail(str(exc), EXIT_REFUSED)
    if codec is None:
        fail("no codec keys configured (set codec_keys or codec_keys_file): nothing to decode with", EXIT_REFUSED)
    origins = ui_origin or list(DEFAULT_UI_ORIGINS)
    if not _is_loopback(host):
        sys.stderr.write(f"warning: serving decrypted payloads on {host}: put it behind the operators' auth\n")

    async def serve() -> None:
        try:
            runner, bound = await start(codec, host, port, origins)
        except OSError as exc:
            fail(f"--port: cannot listen on {host}:{port}: {exc.strerror}", EXIT_REFUSED)  # in use: refused
        url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
        if json_output:
            print_json({"endpoint": url, "ui_origins": origins})
        else:
            sys.stdout.write(f"codec server on {url} (UI origins: {', '.join(origins)})\n")
        sys.stdout.flush()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


def codec_key(
    key_id: Annotated[str, typer.Argument(help="ID stored with each payload, e.g. 2026-11")],
    json_output: JsonFlag = False,
) -> None:
    """Print a fresh 256-bit key entry 'id:base64' for codec_keys (put it first to rotate)."""
    from labrador.codec import CodecError, new_key_entry, parse_keys

    entry = new_key_entry(key_id)
    try:
        parse_keys(entry)
    except CodecError as exc:
        fail(str(exc).replace("entry 1", f"key id {key_id!r}"), EXIT_REFUSED)
    if json_output:
        print_json({"entry": entry})
    else:
        sys.stdout.write(entry + "\n")


def register(app: typer.Typer) -> None:
    app.command("codec-server")(codec_server)
    app.command("codec-key")(codec_key)
