"""A coroutine that runs beside a block of code and stops with it (heartbeats, progress lines,
metric sampling): one place for the start/cancel/await dance, so none of them leaks a task or lets
its cancellation escape."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def running_beside(loop: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Run `loop()` as a task while the block runs; on the way out (however the block ends) cancel
    it and wait until it has stopped."""
    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
