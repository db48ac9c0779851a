"""`labrador labs ...`: validate, list and describe the lab catalog."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from labrador.cli.common import EXIT_REFUSED, JsonFlag, console, fail, print_json
from labrador.cli.tables import Col, print_table
from labrador.settings import Settings, SettingsError, catalog_limits, load_settings
from labs.loader import CatalogError, load_catalog
from labs.models import Catalog, format_duration
from labs.schema import SCHEMAS

labs_app = typer.Typer(
    help="The lab catalog: validate lab files, list labs, print the JSON Schema.", no_args_is_help=True
)

PathArg = Annotated[
    Path | None,
    typer.Argument(help="catalog directory (lab YAML files + node-classes.yaml); default: setting catalog_dir"),
]


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc))


LABS_COLUMNS = (
    Col("name"), Col("kind", drop=1), Col("duration"), Col("nodes"), Col("checks", drop=2),
    Col("title", shrink=True, min_width=16), Col("classes", drop=3, shrink=True),
)


def _load(path: Path | None, as_json: bool) -> Catalog:
    """The catalog, or every error on stderr (one per line; also on stdout as JSON) and exit 1."""
    settings = _settings()
    directory = path if path is not None else settings.catalog_dir
    try:
        return load_catalog(directory, **catalog_limits(settings))
    except CatalogError as exc:
        for error in exc.errors:
            sys.stderr.write(f"{' '.join(str(error).split())}\n")
        if as_json:
            print_json({"valid": False, "directory": str(directory), "errors": [vars(e) for e in exc.errors]})
        raise typer.Exit(EXIT_REFUSED) from None


@labs_app.command("validate")
def validate(path: PathArg = None, as_json: JsonFlag = False) -> None:
    """Check every lab file and node-classes.yaml; print every error as FILE:LINE:COL: field: message."""
    catalog = _load(path, as_json)
    summary = {"valid": True, "labs": len(catalog.labs), "node_classes": len(catalog.node_classes)}
    if as_json:
        print_json(summary)
    else:
        console.print(f"ok: {len(catalog.labs)} labs, {len(catalog.node_classes)} node classes")


@labs_app.command("list")
def list_labs(path: PathArg = None, as_json: JsonFlag = False) -> None:
    """The labs of the catalog: nodes, duration, checks."""
    catalog = _load(path, as_json)
    labs = sorted(catalog.labs.values(), key=lambda lab: lab.name)
    if as_json:
        print_json(
            [
                {
                    **lab.model_dump(mode="json", by_alias=True),
                    "effective_duration": format_duration(lab.effective_duration),
                }
                for lab in labs
            ]
        )
        return
    print_table(console, LABS_COLUMNS, [
        [
            lab.name,
            lab.kind,
            format_duration(lab.effective_duration),
            f"1+{len(lab.workers)}",
            f"{len(lab.checks)} ({lab.total_points} pts)",
            lab.title,
            ", ".join(lab.node_class_names),
        ]
        for lab in labs
    ], title=f"{len(labs)} labs")


@labs_app.command("schema")
def schema(
    which: Annotated[str, typer.Argument(help="lab (lab files) or node-classes (node-classes.yaml)")] = "lab",
    as_json: JsonFlag = False,
) -> None:
    """Print the JSON Schema of lab files (or of node-classes.yaml); the output is JSON either way."""
    if which not in SCHEMAS:
        fail(f"schema: {which!r} is not one of {', '.join(SCHEMAS)}", code=2)
    sys.stdout.write(json.dumps(SCHEMAS[which](), indent=2) + "\n")


def register(app: typer.Typer) -> None:
    app.add_typer(labs_app, name="labs")
