"""What a long wait is at, shown where people wait: a live status line on a terminal, nothing else.

`lab start --wait`, `pool drain --wait` and `image build` wait for minutes. On a terminal (stderr is
a TTY) a rich live status shows the current phase and each finished phase stays as one line; under
`--json` or without a terminal nothing is written, so scripts read stdout unchanged and logs stay quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.status import Status

from cluster.background import running_beside
from workflows.models import LabStatus, Phase

POLL_SECONDS = 0.5


class PhaseLine:
    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self._status: Status | None = None
        self._current: str | None = None
        self._since = time.monotonic()

    def __enter__(self) -> PhaseLine:
        if self.enabled:
            self._status = self.console.status("starting…")
            self._status.start()
        return self

    def update(self, text: str) -> None:
        if not self.enabled or text == self._current:
            return
        now = time.monotonic()
        if self._current is not None and text.split(":")[0] != self._current.split(":")[0]:
            self.console.print(f"[dim]✓ {self._current} ({now - self._since:.1f}s)[/dim]", highlight=False)
            self._since = now
        self._current = text
        assert self._status is not None
        self._status.update(text)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
            if kind is None and self._current is not None:  # the last phase finished too: keep its line
                self.console.print(f"[dim]✓ {self._current} ({time.monotonic() - self._since:.1f}s)[/dim]",
                                   highlight=False)


def describe_phase(status: LabStatus) -> str:
    """One line an operator or student understands, for the phase a lab is in."""
    phase = Phase(status.phase)
    total = len(status.nodes)
    if phase == Phase.QUEUED:
        where = f" (position {status.queue_position})" if status.queue_position else ""
        return f"queued for capacity{where}"
    if phase == Phase.CLAIMING:
        return "claiming warm nodes"
    if phase == Phase.PROVISIONING:
        if status.nodes_ready is not None and total:
            return f"provisioning: {status.nodes_ready}/{total} nodes ready"
        return f"provisioning: {total} nodes" if total else "provisioning"
    if phase == Phase.WIRING:
        return "wiring: joining the workers to the control plane"
    if phase == Phase.SETTING_UP:
        return "setting up the lab"
    if phase == Phase.EXPOSING:
        return "exposing SSH"
    return phase.value


@contextlib.asynccontextmanager
async def following(line: PhaseLine, poll: Callable[[], Awaitable[str | None]]) -> AsyncIterator[None]:
    """While the body waits, ask `poll` for the current phase every half second and show it.

    A failing poll (the workflow not started yet, a transient RPC error) is skipped: progress must
    never make the wait itself fail.
    """
    if not line.enabled:
        yield
        return

    async def loop() -> None:
        while True:
            try:
                text = await poll()
            except Exception:  # best effort display
                text = None
            if text:
                line.update(text)
            await asyncio.sleep(POLL_SECONDS)

    async with running_beside(loop):
        yield


async def pending_activities(handle: Any) -> int:
    """How many activities a workflow run has in flight (its own progress when it has no query)."""
    description = await handle.describe()
    return len(description.raw_description.pending_activities)
