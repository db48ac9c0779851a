"""A clock tests can move: pass `clock=ManualClock()` to SimulatedCluster to skip boot latency and
fault timings without sleeping."""

from __future__ import annotations

import time


class ManualClock:
    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
