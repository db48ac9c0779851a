"""JSON Schemas of the catalog files, generated from the models (committed beside the YAML files).

Regenerate after changing labs/models.py:
    python -m labrador labs schema lab > labs/lab.schema.json
    python -m labrador labs schema node-classes > labs/node-classes.schema.json
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from labs.models import LabFile, NodeClassesFile

CATALOG_DIR = Path(__file__).resolve().parent
SCHEMA_FILES = {"lab": "lab.schema.json", "node-classes": "node-classes.schema.json"}


def _schema(model: type[BaseModel], title: str, file: str) -> dict[str, Any]:
    body = model.model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://labrador.invalid/schemas/{file}",
        **body,
        "title": title,
    }


def lab_schema() -> dict[str, Any]:
    return _schema(LabFile, "labrador lab file", SCHEMA_FILES["lab"])


def node_classes_schema() -> dict[str, Any]:
    return _schema(NodeClassesFile, "labrador node-classes.yaml", SCHEMA_FILES["node-classes"])


SCHEMAS: dict[str, Callable[[], dict[str, Any]]] = {"lab": lab_schema, "node-classes": node_classes_schema}
