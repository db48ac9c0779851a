"""Entry point of the `labrador` command: one typer app with a sub-app per area."""

from __future__ import annotations

import os
import sys

import typer

app = typer.Typer(
    name="labrador",
    help="Durable orchestration for a Kubernetes learning platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Each area owns its module; imported here so `labrador --help` lists them all.
    import importlib

    for module_name in (
        "labrador.cli.labs_cmd",
        "labrador.cli.lab_cmd",
        "labrador.cli.dev_cmd",
        "labrador.cli.pool_cmd",
        "labrador.cli.schedules_cmd",
        "labrador.cli.image_cmd",
        "labrador.cli.codec_cmd",
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # area not built yet
            raise
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
