"""Reads lab YAML files into labs.models with located errors (FILE:LINE:COL: field.path: message).

Every file is read and every problem reported (YAML syntax, duplicate keys, schema errors, cross-field
and cross-file rules) before anything is returned: a catalog with one error loads nothing.
Locations come from the YAML node tree (`yaml.compose`), so an error points at the offending value,
or at the key of an unknown field, or at the mapping that lacks a required field.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from labs.models import (
    MAX_LAB_JSON_BYTES,
    MAX_LAB_NODES,
    Catalog,
    Check,
    ContainerDiskSource,
    Lab,
    LabFile,
    NodeClass,
    NodeClassesFile,
    NodeGroup,
    Problem,
    PvcCloneSource,
    Role,
    Script,
    Scripts,
    format_path,
    parse_duration,
)
from labs.safe_yaml import MAX_FILE_BYTES, YamlRefused, compose

NODE_CLASSES_FILE = "node-classes.yaml"
LAB_SUFFIXES = (".yaml", ".yml")

Path_ = tuple[str | int, ...]
# pydantic puts the tag of a discriminated union in an error's loc; the file has no such key.
_UNION_TAGS: dict[str | int, type[BaseModel]] = {"containerDisk": ContainerDiskSource, "pvcClone": PvcCloneSource}


MESSAGE_MAX_CHARS = 300


def _trim(message: str) -> str:
    """One line, bounded: a message never carries more than a trimmed piece of the file."""
    text = " ".join(message.split())
    return text if len(text) <= MESSAGE_MAX_CHARS else text[: MESSAGE_MAX_CHARS - 1] + "…"


@dataclass(frozen=True)
class LocatedError:
    file: str
    line: int
    column: int
    path: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", _trim(self.message))
        object.__setattr__(self, "path", _trim(self.path)[:120])

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.path}: {self.message}"


class CatalogError(ValueError):
    def __init__(self, errors: list[LocatedError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass
class _Document:
    """One YAML file: its node tree (for locations) and its data."""

    file: str
    root: yaml.Node | None
    data: Any

    def at(self, path: Path_, message: str, *, key: bool = False) -> LocatedError:
        node = _locate(self.root, path, key=key) if self.root is not None else None
        mark = node.start_mark if node is not None else None
        return LocatedError(
            self.file, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, _shown(path), message
        )


def _shown(path: Path_) -> str:
    """The field path as the author sees it: no union tags, no pydantic '[key]' marker."""
    return format_path(tuple(p for p in path if p != "[key]" and p not in _UNION_TAGS))


def _locate(root: yaml.Node, path: Path_, *, key: bool) -> yaml.Node:
    """The deepest node along `path`; parts absent from the file (union tags, missing fields) are skipped."""
    node = root
    for index, part in enumerate(path):
        last = index == len(path) - 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    node = (
                        key_node
                        if (last and key) or (index + 1 < len(path) and path[index + 1] == "[key]")
                        else value_node
                    )
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
    return node


def _inside(path: Path, directory: Path) -> str | None:
    """Why `path` may not be read as part of the catalog `directory`, or None.

    A lab file is a regular file whose real path is inside the catalog directory: a symlink to
    /etc/shadow (or a FIFO, a device) in a contributed catalog is refused, never opened."""
    try:
        real = path.resolve(strict=True)
        base = directory.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        return f"cannot resolve: {getattr(exc, 'strerror', None) or exc}"
    if not real.is_relative_to(base):
        return "refused: it resolves outside the catalog directory (a symlink?)"
    if not real.is_file():
        return "refused: not a regular file"
    return None


def _yaml_error(file: str, exc: yaml.YAMLError) -> LocatedError:
    """A YAML parse or construct error at its mark (1:1 when PyYAML gives none)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        return LocatedError(file, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, "(yaml)", message)
    return LocatedError(file, 1, 1, "(yaml)", str(exc))


def _read(path: Path, file: str, errors: list[LocatedError], directory: Path | None = None) -> _Document | None:
    """Parse one YAML file; syntax errors and duplicate keys go to `errors`."""
    refused = _inside(path, directory if directory is not None else path.parent)
    if refused is not None:
        errors.append(LocatedError(file, 1, 1, "(file)", refused))
        return None
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        errors.append(LocatedError(file, 1, 1, "(file)", f"cannot read: {exc.strerror}"))
        return None
    if len(raw) > MAX_FILE_BYTES:
        errors.append(LocatedError(file, 1, 1, "(file)", f"larger than {MAX_FILE_BYTES // 1024} KiB"))
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        errors.append(LocatedError(file, line, 1, "(file)", "not UTF-8 text"))
        return None
    try:
        loader, root = compose(text)
    except YamlRefused as exc:
        errors.append(LocatedError(file, exc.line, exc.column, "(yaml)", exc.reason))
        return None
    except yaml.YAMLError as exc:
        errors.append(_yaml_error(file, exc))
        return None
    try:
        if root is None:
            errors.append(LocatedError(file, 1, 1, "(root)", "the file is empty"))
            return None
        duplicates = list(_duplicate_keys(root, ()))
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        errors.append(_yaml_error(file, exc))
        return None
    finally:
        loader.dispose()
    document = _Document(file, root, data)
    for dup_path, key_node, first_line in duplicates:
        mark = key_node.start_mark
        message = f"duplicate key {dup_path[-1]!r} (first at line {first_line}); YAML keeps only the last one"
        errors.append(LocatedError(file, mark.line + 1, mark.column + 1, _shown(dup_path), message))
    if not isinstance(data, dict):
        errors.append(document.at((), f"expected a mapping of fields, got {type(data).__name__}"))
        return None
    return document if not duplicates else None


def _duplicate_keys(node: yaml.Node, path: Path_) -> Iterator[tuple[Path_, yaml.Node, int]]:
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in first and key_node.value != "<<":
                    yield (*path, key_node.value), key_node, first[key_node.value]
                first.setdefault(key_node.value, key_node.start_mark.line + 1)
                yield from _duplicate_keys(value_node, (*path, key_node.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*path, i))


def _validate(document: _Document, model: type[BaseModel], errors: list[LocatedError]) -> Any:
    try:
        return model.model_validate(document.data)
    except ValidationError as exc:
        found = exc.errors(include_url=False)
        for err in found:
            if err["type"] == "missing" and _explained_by_typo(err, found, model):
                continue  # `clas: x` already reported as "unknown field 'clas' (did you mean 'class'?)"
            errors.append(_pydantic_error(document, model, err))
        return None


def _explained_by_typo(missing: Any, found: list[Any], model: type[BaseModel]) -> bool:
    parent, field = tuple(missing["loc"][:-1]), str(missing["loc"][-1])
    return any(
        err["type"] == "extra_forbidden"
        and tuple(err["loc"][:-1]) == parent
        and difflib.get_close_matches(str(err["loc"][-1]), _known_fields(model, parent), n=1) == [field]
        for err in found
    )


def _pydantic_error(document: _Document, model: type[BaseModel], err: Any) -> LocatedError:
    loc: Path_ = tuple(err["loc"])
    kind, message = err["type"], str(err["msg"])
    if kind == "extra_forbidden":
        message = f"unknown field {loc[-1]!r}"
        known = _known_fields(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        elif known:
            message += f" (fields: {', '.join(known)})"
        return document.at(loc, message, key=True)
    if kind == "missing":
        return document.at(loc, "required field is missing")
    message = message.removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, str | int | float | bool) and repr(value) not in message:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:79] + "…"
        message += f" (got {shown})"
    return document.at(loc, message)


def _known_fields(model: type[BaseModel], path: Path_) -> list[str]:
    """Field names (aliases) of the model found at `path` inside `model`, for 'did you mean'."""
    current: Any = model
    for part in path:
        if isinstance(part, int) or part in _UNION_TAGS:
            current = _UNION_TAGS.get(part, current)
            continue
        fields = current.model_fields if isinstance(current, type) and issubclass(current, BaseModel) else {}
        field = next((f for n, f in fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _lenient_problems(
    document: _Document,
    schema_errors: list[LocatedError],
    known_classes: dict[str, Role | None] | None,
    max_duration: timedelta | None,
) -> list[LocatedError]:
    """Cross-field rules on a lab file that failed the schema, without re-reporting its schema errors.

    Parts whose meaning is unsure are left out: no node rules when a node's role, name or shape is
    wrong (the names of the others would shift), no class rule for a node without a readable class,
    and no rule at a path that already has a schema error (or inside or above one).
    """
    data = document.data
    bad_paths = {e.path for e in schema_errors}
    problems: list[Problem] = []
    groups, nodes_sure = _lenient_groups(data.get("nodes"))
    raw_scripts = data.get("scripts") if isinstance(data.get("scripts"), dict) else {}
    lab = LabFile.model_construct(
        name="",
        title="",
        nodes=[g for g in groups if g is not None],
        checks=[_lenient(Check, item, i) for i, item in enumerate(_list(data.get("checks")))],
        scripts=Scripts.model_construct(
            setup=[_lenient(Script, item, i) for i, item in enumerate(_list(raw_scripts.get("setup")))],
            teardown=[_lenient(Script, item, i) for i, item in enumerate(_list(raw_scripts.get("teardown")))],
        ),
        kind=data.get("kind") if data.get("kind") in ("lab", "sandbox") else "lab",
        duration=_lenient_duration(data.get("duration")),
    )
    if nodes_sure:
        problems.extend(lab.structure_problems())
    if known_classes is not None:
        problems.extend(
            p
            for i, group in enumerate(groups)
            if group is not None and group.node_class
            for p in LabFile._class_problems(i, group, known_classes)
        )
    if "kind" not in bad_paths and "duration" not in bad_paths:
        problems.extend(lab.duration_problems(max_duration))
    located = [_problem_error(document, p) for p in problems]
    return [e for e in located if not any(_overlaps(e.path, bad) for bad in bad_paths)]


def _overlaps(path: str, other: str) -> bool:
    return path == other or any(
        longer.startswith(shorter) and longer[len(shorter)] in ".["
        for shorter, longer in ((path, other), (other, path))
        if len(longer) > len(shorter)
    )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _lenient_groups(raw: Any) -> tuple[list[NodeGroup | None], bool]:
    """Node groups as far as they can be read, and whether every node's name is certain."""
    if not isinstance(raw, list):
        return [], False
    groups: list[NodeGroup | None] = []
    sure = True
    for item in raw:
        role = item.get("role") if isinstance(item, dict) else None
        name = item.get("name") if isinstance(item, dict) else None
        if role not in tuple(Role) or not (name is None or isinstance(name, str)):
            groups.append(None)
            sure = False
            continue
        assert isinstance(item, dict)
        count = item.get("count", 1)
        node_class = item.get("class")
        groups.append(
            NodeGroup.model_construct(
                name=name,
                role=Role(role),
                node_class=node_class if isinstance(node_class, str) else "",  # "": no class rule
                # Never expand an unchecked count: `count: 1000000000` would build a billion nodes here.
                count=count if isinstance(count, int) and 1 <= count < MAX_LAB_NODES else 1,
                labels={},
                taints=[],
            )
        )
    return groups, sure


def _lenient(model: type[Check] | type[Script], item: Any, index: int) -> Any:
    """A check or script with the fields the rules read; unreadable values become unique placeholders."""
    data = item if isinstance(item, dict) else {}
    name = data.get("name")
    values: dict[str, Any] = {"name": name if isinstance(name, str) else f"(item {index})", "run": ""}
    for field in ("node", "role"):
        if field in data:
            values[field] = data[field] if isinstance(data[field], str) else None
    return model.model_construct(**values)


def _lenient_duration(value: Any) -> timedelta | None:
    try:
        parsed = parse_duration(value)
    except ValueError:
        return None
    return parsed if isinstance(parsed, timedelta) else None


def _problem_error(document: _Document, problem: Problem) -> LocatedError:
    return document.at(problem.path, problem.message)


def _raw_name(document: _Document) -> str | None:
    name = document.data.get("name") if isinstance(document.data, dict) else None
    return name if isinstance(name, str) else None


def _load_node_classes(
    directory: Path, errors: list[LocatedError]
) -> tuple[dict[str, NodeClass], dict[str, Role | None] | None]:
    """Valid classes, and every class name the file mentions with its role (None: file unreadable, so
    lab references to classes are not checked rather than all reported as unknown)."""
    path = directory / NODE_CLASSES_FILE
    file = str(path)
    if not path.exists() and not path.is_symlink():
        errors.append(LocatedError(file, 1, 1, "(file)", f"missing: node classes live in {NODE_CLASSES_FILE}"))
        return {}, None
    document = _read(path, file, errors, directory)
    if document is None:
        return {}, None
    known: dict[str, Role | None] = {}
    raw_classes = document.data.get("node_classes")
    for raw in raw_classes if isinstance(raw_classes, list) else []:
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            role = raw.get("role")
            known.setdefault(raw["name"], Role(role) if role in tuple(Role) else None)
    parsed = _validate(document, NodeClassesFile, errors)
    if parsed is None:
        return {}, known
    classes: dict[str, NodeClass] = {}
    for i, node_class in enumerate(parsed.node_classes):
        if node_class.name in classes:
            errors.append(document.at(("node_classes", i, "name"), f"duplicate node class name {node_class.name!r}"))
        classes.setdefault(node_class.name, node_class)
    return classes, known


MAX_LAB_FILES = 500
MAX_CATALOG_BYTES = 8 << 20
"""All lab files together: the loader also runs in the worker (pool plans), never for long."""


def lab_files(directory: Path) -> list[Path]:
    """The *.yaml entries of the directory (symlinks and odd files too: `_read` refuses them by name)."""
    return sorted(
        p for p in directory.iterdir()
        if p.suffix in LAB_SUFFIXES and p.name != NODE_CLASSES_FILE and (p.is_symlink() or not p.is_dir())
    )


def load_catalog(
    directory: Path,
    *,
    max_duration: timedelta | None = None,
    max_vms: int | None = None,
    max_memory_bytes: int | None = None,
) -> Catalog:
    """Every lab file of `directory` plus its node-classes.yaml, or CatalogError listing every problem.

    `max_duration`, `max_vms` and `max_memory_bytes` are the platform's limits (settings
    max_lab_duration, max_vms, max_memory): a lab that could never run under them is refused here."""
    directory = Path(directory)
    errors: list[LocatedError] = []
    if not directory.is_dir():
        raise CatalogError([LocatedError(str(directory), 1, 1, "(file)", "not a directory")])
    classes, known_classes = _load_node_classes(directory, errors)
    files = lab_files(directory)
    if len(files) > MAX_LAB_FILES:
        errors.append(LocatedError(str(directory), 1, 1, "(file)", f"more than {MAX_LAB_FILES} lab files"))
        files = files[:MAX_LAB_FILES]
    if not files:
        errors.append(LocatedError(str(directory), 1, 1, "(file)", "no lab files (*.yaml) in this directory"))
    labs: dict[str, Lab] = {}
    names: dict[str, str] = {}
    total = 0
    for path in files:
        try:
            total += path.lstat().st_size
        except OSError:
            pass  # _read reports it
        if total > MAX_CATALOG_BYTES:
            errors.append(LocatedError(str(directory), 1, 1, "(file)",
                                       f"the lab files are larger than {MAX_CATALOG_BYTES >> 20} MiB together"))
            break
        document = _read(path, str(path), errors, directory)
        if document is None:
            continue
        raw_name = _raw_name(document)
        if raw_name is not None:
            if raw_name in names:
                errors.append(document.at(("name",), f"duplicate lab name {raw_name!r} (also in {names[raw_name]})"))
            names.setdefault(raw_name, f"{path.name}:{document.at(('name',), '').line}")
        before = len(errors)
        lab_file = _validate(document, LabFile, errors)
        if lab_file is None:
            # Still apply the cross-field rules to what can be read, so one run shows every problem.
            errors.extend(_lenient_problems(document, errors[before:], known_classes, max_duration))
            continue
        problems = lab_file.problems(known_classes, max_duration)
        if not problems:
            problems = lab_file.capacity_problems(classes, max_vms, max_memory_bytes)
        errors.extend(_problem_error(document, p) for p in problems)
        if problems:
            continue
        lab = lab_file.to_lab()
        size = len(lab.model_dump_json(by_alias=True)) + sum(
            len(classes[name].model_dump_json()) for name in lab.node_class_names if name in classes
        )
        if size > MAX_LAB_JSON_BYTES:
            errors.append(document.at((), f"the whole lab is {size:,} bytes as JSON with its node classes; at most "
                                          f"{MAX_LAB_JSON_BYTES:,} ({MAX_LAB_JSON_BYTES // 1024} KiB): it travels "
                                          "in Temporal inputs"))
            continue
        labs.setdefault(lab_file.name, lab)
    if errors:
        # Each file's errors in reading order; files in the order they were read.
        first_seen = {e.file: i for i, e in reversed(list(enumerate(errors)))}
        raise CatalogError(sorted(errors, key=lambda e: (first_seen[e.file], e.line, e.column)))
    return Catalog(labs=labs, node_classes=classes)
