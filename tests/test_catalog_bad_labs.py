"""Every bad case of the catalog is reported at its file, line and field, and nothing is loaded."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from labs.loader import CatalogError, LocatedError, load_catalog

BAD = Path(__file__).parent / "fixtures" / "bad_labs"

# file -> (line, field path, words the message must contain: the offending value, the rule)
EXPECTED: dict[str, list[tuple[int, str, list[str]]]] = {
    "node-classes.yaml": [
        (16, "node_classes[2].memory", ["'1.5GB'", "not a Kubernetes quantity"]),
        (19, "node_classes[3].image", ["k8s-node:latest'", "not pinned"]),
        (23, "node_classes[4].image", ["k8s-node'", "not pinned"]),
        (30, "node_classes[5].build.base_image", ["debian-12:latest'", "not pinned"]),
    ],
    "bad-check-regex.yaml": [(11, "checks[0].expect.stdout", ["'^v1.32.0($'", "not a valid regular expression"])],
    "check-unknown-node.yaml": [(11, "checks[0].node", ["'node02'", "not a node of this lab"])],
    "duplicate-key.yaml": [(7, "title", ["duplicate key 'title'", "line 3"])],
    "duplicate-lab-name.yaml": [(2, "name", ["duplicate lab name 'check-unknown-node'", "check-unknown-node.yaml"])],
    "duplicate-node-name.yaml": [(10, "nodes[2].name", ["duplicate node name 'node02'"])],
    "duration-too-long.yaml": [(4, "duration", ["5h", "maximum 4h"])],
    "malformed-yaml.yaml": [(7, "(yaml)", ["expected <block end>"])],
    "name-not-dns.yaml": [(2, "name", ["'Broken_Kubelet'", "DNS-1123"])],
    "negative-count.yaml": [(9, "nodes[1].count", ["-2", "1 or more"])],
    "no-controlplane.yaml": [(5, "nodes", ["no control-plane node"])],
    "role-class-mismatch.yaml": [(6, "nodes[0].class", ["'worker-v1-31'", "role worker", "role controlplane"])],
    "script-unknown-node.yaml": [(10, "scripts.setup[0].node", ["'node01'", "not a node of this lab"])],
    "two-controlplanes.yaml": [(7, "nodes[1].role", ["second control plane"])],
    "unknown-field.yaml": [(3, "titel", ["unknown field 'titel'", "did you mean 'title'"])],
    "unknown-node-class.yaml": [(6, "nodes[0].class", ["'cp-v1-99'", "does not exist"])],
    "zero-count.yaml": [(9, "nodes[1].count", ["count 0", "1 or more"])],
}


@pytest.fixture(scope="module")
def errors() -> list[LocatedError]:
    with pytest.raises(CatalogError) as caught:
        load_catalog(BAD, max_duration=timedelta(hours=4))
    return caught.value.errors


def test_every_fixture_file_is_a_case() -> None:
    assert sorted(p.name for p in BAD.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("file", sorted(EXPECTED))
def test_each_bad_case_is_located(errors: list[LocatedError], file: str) -> None:
    found = [e for e in errors if Path(e.file).name == file]
    assert [(e.line, e.path) for e in found] == [(line, path) for line, path, _ in EXPECTED[file]], found
    for error, (_, _, words) in zip(found, EXPECTED[file], strict=True):
        for word in words:
            assert word in error.message, error


def test_one_error_per_problem_and_str_is_one_line_each(errors: list[LocatedError]) -> None:
    assert len(errors) == sum(len(cases) for cases in EXPECTED.values())
    caught = CatalogError(errors)
    lines = str(caught).splitlines()
    assert len(lines) == len(errors)
    assert lines[0].startswith(f"{BAD / 'node-classes.yaml'}:16:13: node_classes[2].memory: ")
