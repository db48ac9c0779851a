"""`labrador dev`: run the embedded dev stack (Temporal dev server + worker + simulated cluster)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from labrador.api.keys import KeyConfigError
from labrador.api.server import AddressError
from labrador.cli.common import EXIT_REFUSED, EXIT_UNREACHABLE, fail, non_negative_seconds_option, port_option
from labrador.codec import CodecError
from labrador.devstack import DevStack, DevStackConfig, DevStackError
from labrador.settings import Settings, SettingsError, default_data_dir


def dev(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Temporal's SQLite file, simulated cluster, keys")
    ] = None,
    port: Annotated[int, typer.Option("--port", help="Temporal gRPC port", callback=port_option)] = 7233,
    ui_port: Annotated[int, typer.Option("--ui-port", help="Temporal Web UI port", callback=port_option)] = 8233,
    api_port: Annotated[int, typer.Option("--api-port", help="HTTP API port", callback=port_option)] = 8088,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", help="worker's Prometheus /metrics port", callback=port_option)
    ] = 9464,
    sim_boot_seconds: Annotated[
        float | None,
        typer.Option("--sim-boot-seconds", help="simulated boot latency of new nodes",
                     callback=non_negative_seconds_option),
    ] = None,
) -> None:
    """Run Temporal (Web UI included), the worker and the simulated cluster until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = DevStackConfig(data_dir=(data_dir or default_data_dir()).expanduser().resolve(), port=port,
                            ui_port=ui_port, api_port=api_port, metrics_port=metrics_port)
    stack = DevStack(config, flags={"sim_boot_seconds": sim_boot_seconds})

    def ready(settings: Settings) -> None:
        typer.echo(f"labrador dev: Temporal on {settings.temporal_address}, Web UI {config.ui_url}", err=False)
        typer.echo(f"  HTTP API http://{settings.api_address} (keys in {settings.api_keys_file or 'api_keys'}), "
                   f"metrics http://{settings.metrics_address}/metrics")
        typer.echo(f"  data in {settings.data_dir}; worker on task queue {settings.task_queue}; Ctrl-C stops")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stack.run(stop, on_ready=ready)

    try:
        asyncio.run(main())
    except (SettingsError, CodecError) as exc:
        fail(str(exc))
    except (DevStackError, AddressError, KeyConfigError) as exc:
        fail(str(exc), EXIT_UNREACHABLE if "not reachable" in str(exc) or "exited" in str(exc) else EXIT_REFUSED)
    typer.echo("labrador dev: stopped")


def register(app: typer.Typer) -> None:
    app.command("dev")(dev)
