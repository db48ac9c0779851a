"""Workflows that run outside the Python sandbox (speed, memory): this guard keeps them deterministic.

The import contract (pyproject.toml) already forbids I/O modules in workflows/; this forbids the
non-deterministic calls the sandbox would otherwise have caught, in every module such a workflow
runs: the workflow's own module and everything of this project it imports, followed transitively
(so a module a workflow starts to import is covered without editing this test).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from temporalio.workflow import _Definition

from worker import workflow_classes

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_NAMES = {"random", "uuid", "threading", "time", "os", "secrets"}
FORBIDDEN_ATTRIBUTES = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "sleep", "uuid4", "random"}


def _project_file(module: str) -> Path | None:
    """The source file of a module of this project, or None (standard library, site-packages)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    path = Path(spec.origin).resolve()
    return path if path.is_relative_to(ROOT) and "tests" not in path.relative_to(ROOT).parts else None


def _imported_modules(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from workflows import capacity`
    return found


def unsandboxed_workflow_modules() -> dict[str, Path]:
    """Every project module an unsandboxed workflow of the worker can run, by module name."""
    classes = [*workflow_classes(), *workflow_classes(versioned=True)]
    todo = [cls.__module__ for cls in classes if not _Definition.must_from_class(cls).sandboxed]
    seen: dict[str, Path] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _project_file(module)
        if path is None:
            continue
        seen[module] = path
        todo += sorted(_imported_modules(path, module) - set(seen))
        parent = module.rpartition(".")[0]
        if parent:
            todo.append(parent)  # a package's __init__ runs on import too
    return seen


def _problems(path: Path) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [alias.name.split(".")[0] for alias in node.names]
            module = (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else ""
            problems += [f"line {node.lineno}: imports {n}" for n in [module, *names] if n in FORBIDDEN_NAMES]
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id == "workflow"):  # workflow.now(), workflow.sleep()
                problems.append(f"line {node.lineno}: .{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "sleep":
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "asyncio":
                problems.append(f"line {node.lineno}: asyncio.sleep (use workflow.sleep)")
    return problems


def test_the_scan_follows_the_imports_of_the_unsandboxed_workflows() -> None:
    modules = unsandboxed_workflow_modules()
    # A sample of what the session workflow runs today; the scan itself is derived, not this list.
    assert {"workflows.lab_session", "workflows.models", "workflows.capacity", "labs.models"} <= set(modules)
    assert any(name.endswith("naming") for name in modules)
    assert not any(name.startswith(("activities", "labrador.cli")) for name in modules)
    # The parts the session workflow is composed of (workflows/session/) are all scanned.
    parts = {f"workflows.session.{p.stem}" for p in (ROOT / "workflows" / "session").glob("[!_]*.py")}
    assert parts and parts <= set(modules), sorted(parts - set(modules))


def test_the_unsandboxed_workflows_use_no_clock_randomness_or_threads() -> None:
    problems = {
        str(path.relative_to(ROOT)): found
        for path in unsandboxed_workflow_modules().values()
        if (found := _problems(path))
    }
    assert problems == {}
