"""The API served for real: uvicorn on a free loopback port, in front of the session stack of tests/session."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from labrador.api.server import build_server, serve, wait_started
from labrador.client import LabClient
from labrador.settings import Settings
from tests.session.conftest import Stack, catalog, stack  # noqa: F401 (fixtures)

APP_KEY = "app-key-0123456789abcdef"
APP_KEY_2 = "app-key-rotated-0123456789"
ADMIN_KEY = "admin-key-0123456789abcdef"
KEYS = f"app:{APP_KEY},app:{APP_KEY_2},admin:{ADMIN_KEY}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, key: str | None = APP_KEY, **kwargs: Any) -> tuple[int, Any, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as response:
            body = await response.json(content_type=None) if response.content_length != 0 else None
            return response.status, body, response.headers


@pytest.fixture
async def serve_api() -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    """Start an API for given settings (and LabClient); every one started is stopped at the end."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    http = aiohttp.ClientSession()

    async def start(settings: Settings, labs: LabClient | None = None, **overrides: Any) -> Api:
        settings = settings.model_copy(update={"api_address": f"127.0.0.1:{free_port()}", "api_keys": None,
                                               **overrides})
        if "api_keys" not in overrides:
            from pydantic import SecretStr

            settings = settings.model_copy(update={"api_keys": SecretStr(KEYS)})
        server = build_server(settings, labs)
        stop = asyncio.Event()
        task = asyncio.create_task(serve(server, stop))
        await wait_started(server, task)
        running.append((stop, task))
        return Api(f"http://{settings.api_address}", http)

    yield start
    for stop, task in running:
        stop.set()
        await task
    await http.close()


@pytest.fixture
async def api(stack: Stack, serve_api: Callable[..., Awaitable[Api]]) -> Api:  # noqa: F811
    await stack.start_worker()
    return await serve_api(stack.settings, stack.labs)
