"""Serving the API with uvicorn, inside an asyncio program (`labrador api`, `labrador dev`)."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

from labrador.api.app import create_app
from labrador.client import LabClient
from labrador.settings import Settings


class AddressError(ValueError):
    pass


def split_address(address: str, setting: str = "api_address") -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"setting {setting}: {address!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_server(settings: Settings, labs: LabClient | None = None) -> uvicorn.Server:
    host, port = split_address(settings.api_address)
    config = uvicorn.Config(
        create_app(settings, labs), host=host, port=port, log_level="warning", lifespan="off",
        # The access log has method, path and status only: never bodies, so never a private key.
        access_log=False, server_header=False, proxy_headers=False,
    )
    server = uvicorn.Server(config)
    # The caller owns SIGINT/SIGTERM (uvicorn would replace the handlers of `labrador dev`).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    return server


async def serve(server: uvicorn.Server, stop: asyncio.Event) -> None:
    """Run until `stop` is set; raises if the address cannot be bound."""
    task = asyncio.create_task(server.serve())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopper.cancel()
        try:
            task.result()
        except SystemExit:  # uvicorn exits when it cannot bind
            pass
        if not server.started:
            raise AddressError(f"the API could not listen on {server.config.host}:{server.config.port}")
        return
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def wait_started(server: uvicorn.Server, task: asyncio.Task[None], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not server.started:
        if task.done():
            task.result()  # raises AddressError when the port was taken
        if asyncio.get_running_loop().time() > deadline:
            raise AddressError(f"the API did not start on {server.config.host}:{server.config.port}")
        await asyncio.sleep(0.05)
