"""CLI conventions shared by every command.

Exit codes: 0 success, 1 refused input, state or configuration (bad input, not found, conflict,
settings, codec keys), 2 usage error (typer/click's own, and bad flag values), 3 infrastructure
unreachable (Temporal, no worker answering, a dev stack still starting), 4 delivered but not yet
confirmed (`lab end` with no worker). Errors go to stderr as one line naming what was
wrong; `--json` prints machine-readable output on stdout.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_PENDING = 4
"""Delivered, not yet confirmed: e.g. `lab end` with no worker running (the lab ends when one picks it up)."""

JsonFlag = Annotated[bool, typer.Option("--json", help="machine-readable output")]

MAX_SECONDS = 7 * 24 * 3600.0


def seconds_option(value: float | None) -> float | None:
    """A duration flag in seconds: finite, > 0, at most a week (`nan` passes click's FloatRange,
    and `-5` would start a lab and only then fail). A bad one is a usage error (exit 2)."""
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0 or value > MAX_SECONDS:
        raise typer.BadParameter(f"{value!r} is not a number of seconds between 0 (excluded) and {MAX_SECONDS:g}")
    return value


def non_negative_seconds_option(value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value < 0 or value > MAX_SECONDS:
        raise typer.BadParameter(f"{value!r} is not a number of seconds between 0 and {MAX_SECONDS:g}")
    return value


def port_option(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a TCP port (1-65535)")
    return value

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    """One line on stderr, then exit with the convention's code."""
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    raise typer.Exit(code)


def describe_error(exc: BaseException) -> tuple[str, int]:
    """(one line, exit code) for an error no command handled itself.

    1: refused (bad input, state or configuration: settings, codec keys, a payload this client cannot
    decode); 3: infrastructure unreachable (Temporal, a dev stack still starting)."""
    from temporalio.service import RPCError, RPCStatusCode

    from labrador.client import LabError, Pending, TemporalUnreachable
    from labrador.codec import CodecError, undecodable_message
    from labrador.settings import DevStackNotReady, SettingsError

    text = " ".join(str(exc).split())[:500]
    codec_problem = undecodable_message(exc)
    if codec_problem is not None:
        return codec_problem, EXIT_REFUSED
    if isinstance(exc, Pending):
        return text, EXIT_PENDING
    if isinstance(exc, TemporalUnreachable | DevStackNotReady):
        return text, EXIT_UNREACHABLE
    if isinstance(exc, SettingsError | CodecError | LabError):
        return text, EXIT_REFUSED
    if isinstance(exc, RPCError):
        unreachable = exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED)
        return f"Temporal: {text}", EXIT_UNREACHABLE if unreachable else EXIT_REFUSED
    if isinstance(exc, RuntimeError) and "connect" in text.lower():
        return f"Temporal is unreachable: {text}", EXIT_UNREACHABLE
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or text}{where}", EXIT_REFUSED
    refusal = _workflow_refusal(exc)
    if refusal is not None:
        return refusal, EXIT_REFUSED
    return f"unexpected {type(exc).__name__}: {text}", EXIT_REFUSED


def _workflow_refusal(exc: BaseException) -> str | None:
    """The message of the ApplicationError that failed a workflow the command ran (pool status,
    pool size --wait: e.g. "pool plan: the catalog does not load: FILE:LINE:COL: ..."), which says
    what to fix; "Workflow execution failed" alone does not."""
    from temporalio.client import WorkflowFailureError
    from temporalio.exceptions import ApplicationError

    if not isinstance(exc, WorkflowFailureError):
        return None
    cause: BaseException | None = exc.cause
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return " ".join(cause.message.split())[:500]
        cause = cause.__cause__ or getattr(cause, "cause", None)
    return None


def to_jsonable(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list | tuple):
        return [to_jsonable(item) for item in data]
    if isinstance(data, dict):
        return {str(k): to_jsonable(v) for k, v in data.items()}
    return data


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(data), indent=2, default=str) + "\n")
