"""A webhook receiver on loopback that verifies Standard Webhooks signatures like an app would."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from .conftest import free_port


@dataclass
class Receiver:
    secret: str
    fail_first: int = 0  # answer 503 to this many requests first (retries must follow)
    always: int | None = None  # answer this status to every request
    events: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    requests: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.text()
        if self.always is not None:
            return web.Response(status=self.always)
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.rejected.append(str(exc))
            return web.Response(status=400)
        self.events.append(payload)
        self.ids.append(request.headers["webhook-id"])
        return web.Response(status=204)

    async def start(self, path: str = "/hooks") -> Receiver:
        app = web.Application()
        app.router.add_post(path, self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}{path}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, event_type: str, within: float = 20) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                for event in self.events:
                    if event["type"] == event_type:
                        return event
                await asyncio.sleep(0.05)

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    def dumps(self) -> str:
        return json.dumps(self.events, indent=1)
