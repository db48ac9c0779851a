"""The session workflow runs outside the Python sandbox (speed, memory): this guard keeps it deterministic.

The import contract (pyproject.toml) already forbids I/O modules in workflows/; this forbids the
non-deterministic calls the sandbox would otherwise have caught in the workflow's own source.
"""

from __future__ import annotations

import ast
from pathlib import Path

import workflows.lab_session as lab_session

FORBIDDEN_NAMES = {"random", "uuid", "threading", "time", "os", "secrets"}
FORBIDDEN_ATTRIBUTES = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "sleep", "uuid4", "random"}


def test_the_unsandboxed_workflow_uses_no_clock_randomness_or_threads() -> None:
    tree = ast.parse(Path(lab_session.__file__).read_text())
    problems = []
    for node in ast.walk(tree):
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
    assert problems == []
