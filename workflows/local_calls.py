"""Local activities in flight, told to the running workflow (deterministic: workflow code only).

A workflow task lasts while local activities run: several activations, one per answer. A workflow
that wants to act once per task, after its last activation (the session upserts its phase search
attribute then, LEAN_START_PATCH), defines `_local_call_started` / `_local_call_ended`; every local
activity the session's code runs goes through `in_flight()`. Other workflows ignore it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from temporalio import workflow


@contextmanager
def in_flight() -> Iterator[None]:
    owner = workflow.instance()
    started = getattr(owner, "_local_call_started", None)
    ended = getattr(owner, "_local_call_ended", None)
    if started is None or ended is None:
        yield
        return
    started()
    try:
        yield
    finally:
        ended()
