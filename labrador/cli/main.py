"""Entry point of the `labrador` command: one typer app with a sub-app per area."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer._click import ClickException, Context
from typer.core import TyperGroup

from labrador.cli.common import describe_error


class OneLineErrors(TyperGroup):
    """Every command runs under this: an exception no command handled becomes one line on stderr and
    the exit code of the README's conventions (never a traceback)."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except Exception as exc:
            message, code = describe_error(exc)
            sys.stderr.write(f"error: {message}\n")
            raise typer.Exit(code) from None


app = typer.Typer(
    name="labrador",
    help="Durable orchestration for a Kubernetes learning platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
)


def _register() -> None:
    # Each area owns its module and adds its commands; `labrador --help` lists them all.
    from labrador.cli import (
        admin_cmd,
        api_cmd,
        codec_cmd,
        dev_cmd,
        image_cmd,
        lab_cmd,
        labs_cmd,
        pool_cmd,
        schedules_cmd,
        webhooks_cmd,
    )

    for module in (labs_cmd, lab_cmd, dev_cmd, pool_cmd, schedules_cmd, image_cmd, codec_cmd, api_cmd,
                   webhooks_cmd, admin_cmd):
        module.register(app)


_register()


def main() -> None:
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    # The Temporal client's Rust runtime keeps threads that can abort CPython's finalisation
    # ("PyGILState_Release ... must be current", temporalio/sdk-python#300); a CLI has nothing
    # left to clean up once its command returned, so it skips interpreter teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
