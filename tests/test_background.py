"""cluster.background.running_beside: the loop runs while the block runs and is stopped after it,
however the block ends (heartbeats, progress lines and metric sampling rely on it)."""

from __future__ import annotations

import asyncio

import pytest

from cluster.background import running_beside


async def test_the_loop_runs_during_the_block_and_stops_after_it() -> None:
    ticks: list[int] = []
    stopped = asyncio.Event()

    async def loop() -> None:
        try:
            while True:
                ticks.append(1)
                await asyncio.sleep(0.01)
        finally:
            stopped.set()

    async with running_beside(loop):
        await asyncio.sleep(0.05)
    assert ticks and stopped.is_set()
    count = len(ticks)
    await asyncio.sleep(0.03)
    assert len(ticks) == count


async def test_the_loop_stops_when_the_block_fails() -> None:
    stopped = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    with pytest.raises(RuntimeError, match="the block failed"):
        async with running_beside(loop):
            await asyncio.sleep(0)
            raise RuntimeError("the block failed")
    assert stopped.is_set()
