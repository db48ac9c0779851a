"""The docs are part of the product: what README.md and docs/*.md name must exist.

Checked in every backticked span and fenced code block:
- `labrador ...` commands against the typer app (subcommands and --options);
- repository paths (`labs/node-classes.yaml`, `docs/pool.md#anchor`, `tests/pool/`) against the tree;
- dotted names of the project (`cluster.published_images.JsonFilePublishedImages`,
  `PoolRefillInput.drained` style attributes included) against the code;
- settings (`LABRADOR_MAX_VMS`, `settings.max_vms`, "setting `max_vms`") against the Settings model;
- links between the docs ([x](docs/y.md)).
A stale note that names something removed or renamed fails here.
"""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from pydantic import BaseModel

from cluster.settings import Settings
from labrador.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("workflows", "activities", "image_pipeline", "labs", "cluster", "labrador", "tests", "bench", "deploy",
       "docs", "scripts", ".ci")
TOP_FILES = ("worker.py", "pyproject.toml", "constraints.txt", "README.md")
PACKAGES = ("workflows", "activities", "image_pipeline", "labs", "cluster", "labrador", "worker")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def spans(text: str) -> Iterator[tuple[int, str]]:
    """(line number, code) of every inline span and every line of every fenced block."""
    for block in _FENCE.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        for offset, line in enumerate(block.group(1).splitlines()):
            yield first + offset, line
    outside = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for match in _SPAN.finditer(outside):
        yield outside.count("\n", 0, match.start()) + 1, match.group(1)


# --- labrador commands ---------------------------------------------------------------------------

ROOT_COMMAND = typer.main.get_command(app)
_STOP = {"|", "||", "&&", ";", ">", ">>", "<", "#", "2>&1", "&"}


def command_problem(text: str) -> str | None:
    """None when `text` (starting with 'labrador ') is a command of the CLI with options it has."""
    try:
        tokens = shlex.split(text.split(" #")[0], comments=False)
    except ValueError:
        tokens = text.split()
    command: Any = ROOT_COMMAND  # typer's own click: groups are the commands with `.commands`
    parents: list[Any] = []
    index = 1
    while index < len(tokens):
        token = tokens[index]
        if token in _STOP or token.startswith(("#", "$(", "`")):
            break
        if token == "/" and parents and index + 1 < len(tokens):  # "pool status / drain": an alternative
            command = parents.pop()
            index += 1
            continue
        if hasattr(command, "commands") and not token.startswith("-"):
            sub = command.commands.get(token)
            if sub is None:
                if token.isupper() or token.startswith(("<", "…", "...")):
                    index += 1
                    continue
                return f"`labrador {' '.join(tokens[1:index + 1])}`: no command {token!r}"
            parents.append(command)
            command = sub
        elif token.startswith("--"):
            name = token.split("=")[0]
            known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
            known |= {"--help"}
            if name not in known and name != "--":
                return f"`{text}`: {command.name} has no option {name} (has {', '.join(sorted(known))})"
        index += 1
    return None


def commands() -> Iterator[tuple[str, int, str]]:
    for path in DOCS:
        for line, code in spans(path.read_text()):
            for part in re.split(r"\s*(?:&&|;)\s*", code.strip()):
                # `labrador CLI (typer)` in a picture is not a command: a command word follows.
                if re.match(r"^labrador( [a-z][a-z-]*( |$)|$)", part):
                    yield path.name, line, part


# --- paths, dotted names, settings -----------------------------------------------------------------

_PATH = re.compile(
    r"(?<![\w./-])((?:" + "|".join(re.escape(t) for t in TOP) + r")/[\w./*-]*|" +
    "|".join(re.escape(f) for f in TOP_FILES) + r")"
)
_DOTTED = re.compile(r"(?<![\w./-])((?:" + "|".join(PACKAGES) + r")(?:\.[A-Za-z_]\w*)+)(?![\w/])")
NOT_NAMES = {"py", "md", "yaml", "yml", "json", "toml", "sh", "txt", "io", "local"}  # files, domains
_ENV = re.compile(r"\bLABRADOR_([A-Z][A-Z0-9_]*)\b")
_SETTING_ATTR = re.compile(r"(?<![\w.])[Ss]ettings\.(?!py\b)([a-z_][a-z0-9_]*)\b(?!\.py)")
_SETTING_WORD = re.compile(r"\bsettings? `([a-z_][a-z0-9_]*)`")
_LINK = re.compile(r"\]\(((?!https?:|mailto:|#)[^)\s]+)\)")
# LABRADOR_CONFIG names the config file; LABRADOR_RECORD_HISTORIES and LABRADOR_HISTORY_GENERATION are
# the tests' switches (docs/session.md).
NOT_SETTINGS = {"CONFIG", "RECORD_HISTORIES", "HISTORY_GENERATION"}


def path_problem(doc: Path, raw: str) -> str | None:
    path = raw.split("#")[0].split("::")[0].rstrip(".,:;)")
    path = re.sub(r":\d+(-\d+)?$", "", path)
    if not path or "*" in path or "<" in path or "{" in path or path.endswith("_"):
        return None  # a pattern, not one file
    if any(part.isupper() for part in path.split("/")):
        return None  # a placeholder (`deploy/builds/VERSION/`), as in commands (`NS/NAME`)
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if not path.endswith("/") and "." not in last and path not in TOP_FILES:
        return None  # `labrador/node-images` is a repository name: only files (x.y) and dirs (x/) are paths
    if (ROOT / path).exists() or (doc.parent / path).exists():
        return None
    module, _, attr = path.rpartition(".")
    if attr and not attr.islower() and (ROOT / f"{module}.py").exists():
        return None  # `cluster/kubevirt/api.PERMISSIONS`: a name in that file
    return f"path {path!r} does not exist"


def dotted_problem(name: str) -> str | None:
    parts = name.rstrip(".").split(".")
    if parts[-1] in NOT_NAMES:
        return None
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if isinstance(obj, type) and issubclass(obj, BaseModel) and attr in obj.model_fields:
                return None  # a model field: nothing deeper is checked
            if not hasattr(obj, attr):
                return f"{name!r}: {'.'.join(parts[:cut])} has no {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"{name!r}: no such module"


def problems_in(doc: Path, text: str | None = None) -> Iterator[str]:
    text = doc.read_text() if text is None else text
    for line, code in spans(text):
        where = f"{doc.relative_to(ROOT)}:{line}"
        for match in _PATH.finditer(code):
            if (problem := path_problem(doc, match.group(1))) is not None:
                yield f"{where}: {problem}"
        for match in _DOTTED.finditer(code):
            if (problem := dotted_problem(match.group(1))) is not None:
                yield f"{where}: {problem}"
        for pattern in (_ENV, _SETTING_ATTR):
            for match in pattern.finditer(code):
                name = match.group(1).lower()
                if match.group(1) not in NOT_SETTINGS and name not in Settings.model_fields:
                    yield f"{where}: setting {name!r} does not exist (Settings in cluster/settings.py)"
    for match in _SETTING_WORD.finditer(text):
        if match.group(1) not in Settings.model_fields:
            line = text.count("\n", 0, match.start()) + 1
            yield f"{doc.relative_to(ROOT)}:{line}: setting {match.group(1)!r} does not exist"
    for match in _LINK.finditer(text):
        target = match.group(1).split("#")[0]
        if target and not (doc.parent / target).exists():
            line = text.count("\n", 0, match.start()) + 1
            yield f"{doc.relative_to(ROOT)}:{line}: link to {target!r}, which does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_name_and_setting_a_doc_mentions_exists(doc: Path) -> None:
    problems = list(problems_in(doc))
    assert not problems, "\n".join(problems)


def test_every_labrador_command_in_the_docs_exists() -> None:
    found = list(commands())
    assert len(found) > 20  # the docs do show commands: the parser sees them
    problems = [f"{doc}:{line}: {problem}" for doc, line, text in found if (problem := command_problem(text))]
    assert not problems, "\n".join(problems)


def test_the_checks_catch_what_went_stale() -> None:
    assert command_problem("labrador pool size worker-v1-31 --min 4") is None
    assert command_problem("labrador pool status / size / drain") is None
    assert command_problem("labrador pool grow worker-v1-31") is not None
    assert command_problem("labrador lab start --student a --lab b --fast") is not None
    assert dotted_problem("labrador.naming.dns_label") is not None  # moved to cluster.naming
    assert dotted_problem("cluster.naming.dns_label") is None
    assert dotted_problem("workflows.pool_models.PoolRefillInput.drained") is None
    assert path_problem(ROOT / "README.md", "labrador/ssh.py") is not None
    assert path_problem(ROOT / "README.md", "docs/pool.md#sizing") is None
    assert path_problem(ROOT / "README.md", "deploy/builds/VERSION/") is None  # a placeholder
    assert path_problem(ROOT / "README.md", "deploy/builds/9.9.9/") is not None
    assert list(problems_in(ROOT / "docs" / "x.md", "`LABRADOR_NO_SUCH_THING` and `settings.max_vms`")) == [
        "docs/x.md:1: setting 'no_such_thing' does not exist (Settings in cluster/settings.py)"
    ]
    assert list(problems_in(ROOT / "docs" / "x.md", "see [the pool](gone.md)")) == [
        "docs/x.md:1: link to 'gone.md', which does not exist"
    ]
