"""The catalog shipped in labs/: it loads, matches its committed schemas, and its labs are real exercises."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml

from labs.loader import NODE_CLASSES_FILE, lab_files, load_catalog
from labs.models import Catalog, Role
from labs.schema import SCHEMA_FILES, SCHEMAS

LABS = Path(__file__).resolve().parent.parent / "labs"
BAD = Path(__file__).parent / "fixtures" / "bad_labs"
ALL_YAML = sorted(LABS.glob("*.yaml"))


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(LABS, max_duration=timedelta(hours=4))


def test_catalog_has_real_labs_and_the_sandbox(catalog: Catalog) -> None:
    labs = [lab for lab in catalog.labs.values() if lab.kind == "lab"]
    assert len(labs) >= 6
    assert all(lab.checks and lab.scripts.setup and lab.total_points > 0 for lab in labs)
    sandbox = catalog.lab("sandbox")
    assert sandbox.kind == "sandbox" and sandbox.effective_duration == timedelta(hours=2)
    assert [n.name for n in sandbox.nodes] == ["controlplane", "node01", "node02"]


def test_node_classes_cover_two_versions_both_roles_and_a_pvc_clone(catalog: Catalog) -> None:
    classes = catalog.node_classes.values()
    versions = {(c.kubernetes_version.rsplit(".", 1)[0], c.role) for c in classes}
    assert {
        ("1.31", Role.CONTROLPLANE),
        ("1.31", Role.WORKER),
        ("1.32", Role.CONTROLPLANE),
        ("1.32", Role.WORKER),
    } <= versions
    assert any(c.disk.type == "pvcClone" for c in classes)
    assert all(c.image.startswith("registry.lab.internal/") for c in classes)
    recipes = [c.build for c in classes if c.build]
    assert recipes and all("kubeadm config images list" in r.install_script for r in recipes)


def test_upgrade_lab_runs_on_an_image_with_the_next_version_staged(catalog: Catalog) -> None:
    lab = catalog.lab("cluster-upgrade")
    assert lab.workers, "an upgrade lab needs a worker to drain and upgrade"
    for node in lab.nodes:
        node_class = catalog.node_classes[node.node_class]
        assert node_class.kubernetes_version == "1.31.4"
        assert node_class.build and "/opt/labrador/upgrade/v${NEXT_VERSION}" in node_class.build.install_script
    assert "preloaded" in lab.description and "/opt/labrador/upgrade/v1.32.0/debs/" in lab.description
    assert any("v1\\.32\\.0" in (c.expect.stdout or "") for c in lab.checks)


# A tool in command position (line start, after a pipe, ;, &&, $( or a shell keyword) without its path.
BARE_TOOL = re.compile(
    r"(?:^|[|;&(]|\bthen|\bdo|\bif|!)\s*(kubectl|kubeadm|systemctl|crictl|journalctl|pgrep)\b", re.MULTILINE
)


def test_checks_and_scripts_call_tools_by_absolute_path(catalog: Catalog) -> None:
    for lab in catalog.labs.values():
        for item in [*lab.checks, *lab.scripts.setup, *lab.scripts.teardown]:
            assert not BARE_TOOL.search(item.run), f"{lab.name}/{item.name}: {BARE_TOOL.search(item.run)}"


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: p.name)
def test_each_file_points_editors_at_its_schema_and_validates_against_it(path: Path) -> None:
    which = "node-classes" if path.name == NODE_CLASSES_FILE else "lab"
    first_line = path.read_text().splitlines()[0]
    assert first_line == f"# yaml-language-server: $schema=./{SCHEMA_FILES[which]}"
    schema = json.loads((LABS / SCHEMA_FILES[which]).read_text())
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("which", sorted(SCHEMA_FILES))
def test_committed_schema_is_the_generated_one(which: str) -> None:
    committed = json.loads((LABS / SCHEMA_FILES[which]).read_text())
    assert committed == SCHEMAS[which](), (
        f"labs/{SCHEMA_FILES[which]} is stale: python -m labrador labs schema {which} > labs/{SCHEMA_FILES[which]}"
    )


def test_schema_catches_what_editors_should_flag() -> None:
    schema = json.loads((LABS / SCHEMA_FILES["lab"]).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for bad in ("unknown-field.yaml", "zero-count.yaml", "name-not-dns.yaml"):
        assert list(validator.iter_errors(yaml.safe_load((BAD / bad).read_text()))), bad
    classes = json.loads((LABS / SCHEMA_FILES["node-classes"]).read_text())
    problems = list(
        jsonschema.Draft202012Validator(classes).iter_errors(yaml.safe_load((BAD / NODE_CLASSES_FILE).read_text()))
    )
    assert {tuple(p.absolute_path) for p in problems} >= {
        ("node_classes", 2, "memory"),
        ("node_classes", 3, "image"),
        ("node_classes", 4, "image"),
    }


def test_lab_files_skip_the_node_classes_file() -> None:
    assert NODE_CLASSES_FILE not in [p.name for p in lab_files(LABS)]


def test_multi_line_scripts_stop_at_the_first_failure(catalog: Catalog) -> None:
    # Scripts run through `bash -c`: without errexit a failed step would let setup report success.
    for lab in catalog.labs.values():
        for script in [*lab.scripts.setup, *lab.scripts.teardown]:
            if "\n" in script.run.strip():
                assert script.run.startswith("set -euo pipefail\n"), f"{lab.name}/{script.name}"
