"""Progress reports the pipeline steps hand to their caller (an activity heartbeat, a rich bar)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    step: str
    done: int
    total: int | None = None
    detail: str = ""

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None


ProgressCallback = Callable[[Progress], None]


def ignore(_: Progress) -> None:
    return None
