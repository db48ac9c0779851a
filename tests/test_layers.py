"""The floor plan holds: no module of the product imports by name at run time.

The import contract (pyproject.toml, `lint-imports`) sees every `import` statement, lazy ones too,
but not `importlib.import_module("cluster.kubevirt.api")` or `__import__`: that is how an upward
import hid before (labrador.published_images). This test bans them so the contract stays complete.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("labrador", "activities", "image_pipeline", "workflows", "cluster", "labs")


def _product_files() -> list[Path]:
    files = [ROOT / "worker.py"]
    for package in PACKAGES:
        files.extend(sorted((ROOT / package).rglob("*.py")))
    return files


def _imports_by_name(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "importlib" for alias in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "importlib":
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            lines.append(node.lineno)
    return lines


def test_no_module_imports_by_name() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _product_files()
        for line in _imports_by_name(ast.parse(path.read_text(), filename=str(path)))
    ]
    assert not found, f"importlib/__import__ hide imports from the import contract: {found}"


def test_the_check_sees_a_hidden_import() -> None:
    source = "def f():\n    import importlib\n    return importlib.import_module('cluster.kubevirt.api')\n"
    assert _imports_by_name(ast.parse(source)) == [2]
    assert _imports_by_name(ast.parse("x = __import__('labrador')\n")) == [1]
    assert _imports_by_name(ast.parse("from importlib import import_module\n")) == [1]


def test_the_shell_is_on_top() -> None:
    """The layers the README draws are the layers the contract enforces."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    assert layers[0] == "labrador" and layers[-1] == "labs"
    assert set(layers) == set(PACKAGES) == set(config["root_packages"])
    readme = (ROOT / "README.md").read_text()
    assert " > ".join(layers) in readme, "README architecture: state the layer order as in pyproject.toml"
