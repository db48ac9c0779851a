"""What protects the API from its callers: a body size limit, a per-key rate limit, replayed requests.

All three are per API process (in memory). Idempotency of a lab start holds across replicas too: the
start records the caller and its Idempotency-Key in the workflow's memo (labrador/api/app.py).
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labrador.api.models import Problem


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, by Content-Length or while reading a chunked body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send)
            return
        seen = 0
        too_large = False

        async def limited() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_large = True
                    raise _TooLarge
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, send)
        except Exception:
            if too_large and not started:
                await self._refuse(scope, send)
                return
            raise

    async def _refuse(self, scope: Scope, send: Send) -> None:
        problem = Problem(type="https://labrador.dev/problems/body-too-large", title="Body too large", status=413,
                          detail=f"body: larger than the limit of {self.limit} bytes (setting api_max_body_bytes)",
                          instance=scope.get("path"))
        body = json.dumps(problem.model_dump(exclude_none=True)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/problem+json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key: `per_minute` requests per minute, bursts up to the same number."""

    def __init__(self, per_minute: int, *, max_keys: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._max_keys = max_keys

    def take(self, key_id: str, now: float | None = None) -> float:
        """0 when allowed, else the seconds until the next request would be."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(key_id, None) or _Bucket(self.capacity, now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        self._buckets[key_id] = bucket
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))


@dataclass
class Replay:
    fingerprint: str
    status: int
    body: Any
    at: float


class IdempotencyCache:
    """Responses by (caller, route, Idempotency-Key) for 24 h: a retried request gets the first answer;
    the same key with a different request is refused (422)."""

    def __init__(self, ttl_seconds: float = 24 * 3600, max_entries: int = 10_000) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str, str], Replay] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> Replay | None:
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry.at > self.ttl:
            del self._entries[key]
            return None
        return entry

    def put(self, key: tuple[str, str, str], fingerprint: str, status: int, body: Any) -> None:
        self._entries[key] = Replay(fingerprint, status, body, time.monotonic())
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
