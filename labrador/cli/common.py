"""CLI conventions shared by every command.

Exit codes: 0 success, 1 refused input or state (bad input, not found, conflict), 2 usage error
(typer/click's own), 3 infrastructure unreachable. Errors go to stderr as one line naming what was
wrong; `--json` prints machine-readable output on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

JsonFlag = Annotated[bool, typer.Option("--json", help="machine-readable output")]

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    """One line on stderr, then exit with the convention's code."""
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    raise typer.Exit(code)


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
