"""Strict validators for rendered manifests.

The KubeVirt CRD schemas and the CDI swagger list properties but never forbid unknown ones, so a
typo in a field name would pass them (the API server drops unknown fields silently). We make a
strict copy at test time: every object schema that lists `properties` gets
`additionalProperties: false` (unless it says x-kubernetes-preserve-unknown-fields).
Core objects go through kubernetes-validate in strict mode.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

KUBERNETES_VERSION = "1.31"


@functools.cache
def _schemas_dir() -> Path:
    """`shared/schemas` beside the project (or beside a parent of a worktree); env override."""
    override = os.environ.get("LABRADOR_SCHEMAS_DIR")
    if override:
        return Path(override)
    project = Path(__file__).resolve().parents[2]
    for parent in project.parents:
        candidate = parent / "shared" / "schemas"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("shared/schemas not found beside the project; set LABRADOR_SCHEMAS_DIR")


def strictify(schema: Any) -> Any:
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    return schema


@functools.cache
def _crd_validator(filename: str) -> jsonschema.protocols.Validator:
    schema = strictify(json.loads((_schemas_dir() / filename).read_text()))
    return jsonschema.Draft7Validator(schema)


@functools.cache
def _swagger_validator(filename: str, definition: str) -> jsonschema.protocols.Validator:
    swagger = json.loads((_schemas_dir() / filename).read_text())
    schema = strictify({"$ref": f"#/definitions/{definition}", "definitions": swagger["definitions"]})
    return jsonschema.Draft4Validator(schema)


CRD_FILES = {
    ("kubevirt.io/v1", "VirtualMachine"): "kubevirt-crd-schema-virtualmachine.json",
    ("kubevirt.io/v1", "VirtualMachineInstance"): "kubevirt-crd-schema-virtualmachineinstance.json",
}
SWAGGER_DEFINITIONS = {
    ("cdi.kubevirt.io/v1beta1", "DataVolume"): ("cdi-swagger.json", "v1beta1.DataVolume"),
    ("kubevirt.io/v1", "VirtualMachine"): ("kubevirt-swagger.json", "v1.VirtualMachine"),
}


def errors(doc: dict[str, Any]) -> list[str]:
    """Every schema violation of a manifest (empty when valid)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    found: list[str] = []
    if key in CRD_FILES:
        found += [f"CRD schema: {e.json_path}: {e.message}" for e in _crd_validator(CRD_FILES[key]).iter_errors(doc)]
    if key in SWAGGER_DEFINITIONS:
        validator = _swagger_validator(*SWAGGER_DEFINITIONS[key])
        found += [f"swagger: {e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
    if key not in CRD_FILES and key not in SWAGGER_DEFINITIONS:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            found.append(f"kubernetes-validate: {exc.message if hasattr(exc, 'message') else str(exc)[:300]}")
    return found
