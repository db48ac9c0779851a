"""Connecting the CLI to Temporal with the CLI's exit-code conventions (3 when unreachable)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from labrador.cli.common import EXIT_UNREACHABLE, fail
from labrador.settings import Settings, SettingsError, load_settings
from labrador.temporal import connect

UNREACHABLE = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED}


def settings_or_fail() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc))


@asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[Client]:
    try:
        client = await connect(settings)
    except (RuntimeError, OSError) as exc:
        fail(f"Temporal at {settings.temporal_address} is unreachable: {exc}", EXIT_UNREACHABLE)
    try:
        yield client
    except RPCError as exc:
        if exc.status in UNREACHABLE:
            fail(f"Temporal at {settings.temporal_address} is unreachable: {exc}", EXIT_UNREACHABLE)
        raise
