"""The loader and the models: expansion of worker groups, defaults, and reporting every error at once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from labs.loader import CatalogError, load_catalog
from labs.models import Check, Lab, LabNode, NodeClass, Role, quantity_bytes
from tests.catalog_texts import node_class

CLASSES = "node_classes:\n" + node_class("cp", "controlplane") + node_class(
    "wk", "worker", image=f"registry.lab.internal:5000/labrador/k8s-node@sha256:{'a' * 64}")

GOOD_LAB = """\
name: good
title: Good
nodes:
  - role: controlplane
    class: cp
  - role: worker
    class: wk
    count: 2
    labels: {{accelerator: gpu}}
    taints: [{{key: dedicated, value: gpu, effect: NoSchedule}}]
  - name: {extra}
    role: worker
    class: wk
checks:
  - name: ready
    node: node02
    run: /usr/bin/true
"""


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def errors_of(directory: Path, **kwargs: object) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        load_catalog(directory, **kwargs)  # type: ignore[arg-type]
    return [f"{Path(e.file).name}:{e.line}:{e.column}: {e.path}: {e.message}" for e in caught.value.errors]


def test_worker_groups_expand_to_numbered_nodes(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, {"node-classes.yaml": CLASSES, "good.yaml": GOOD_LAB.format(extra="gpu01")}))
    lab = catalog.lab("good")
    assert [(n.name, n.role) for n in lab.nodes] == [
        ("controlplane", Role.CONTROLPLANE),
        ("node01", Role.WORKER),
        ("node02", Role.WORKER),
        ("gpu01", Role.WORKER),
    ]
    assert lab.controlplane.node_class == "cp"
    assert [n.name for n in lab.workers] == ["node01", "node02", "gpu01"]
    assert lab.nodes[2].labels == {"accelerator": "gpu"} and lab.nodes[2].taints[0].effect == "NoSchedule"
    assert lab.nodes[3].labels == {}
    assert catalog.classes_for(lab).keys() == {"cp", "wk"}


def test_unnamed_worker_after_named_ones_takes_its_position(tmp_path: Path) -> None:
    text = GOOD_LAB.format(extra="node03").replace("count: 2", "count: 1").replace("node: node02", "node: node03")
    lab = load_catalog(write(tmp_path, {"node-classes.yaml": CLASSES, "good.yaml": text})).lab("good")
    assert [n.name for n in lab.workers] == ["node01", "node03"]
    assert "node02" not in [n.name for n in lab.nodes]


def test_defaults_from_the_platform(tmp_path: Path) -> None:
    sandbox = "name: box\ntitle: Box\nkind: sandbox\nnodes: [{role: controlplane, class: cp}]\n"
    catalog = load_catalog(write(tmp_path, {"node-classes.yaml": CLASSES, "box.yaml": sandbox}))
    assert catalog.lab("box").effective_duration == timedelta(hours=2)
    assert catalog.lab("box").max_extensions == 2 and catalog.lab("box").extension == timedelta(minutes=15)
    assert catalog.node_classes["cp"].effective_memory == "1536Mi"
    assert catalog.node_classes["wk"].effective_memory == "1126Mi"
    assert catalog.node_classes["wk"].memory_bytes == 1126 * 2**20


def test_every_error_of_every_file_and_nothing_loaded(tmp_path: Path) -> None:
    broken = """\
name: broken
title: Broken
nodes:
  - role: controlplane
    class: cp
  - role: worker
    clas: wk
    count: 0
    labels: {"bad key!": x}
checks:
  - name: Ready
    run: /usr/bin/true
    timeout: soon
"""
    also = "name: also\ntitle: Also\nextension: 0s\nnodes: [{role: controlplane, class: cp}]\n"
    write(
        tmp_path,
        {
            "node-classes.yaml": CLASSES,
            "good.yaml": GOOD_LAB.format(extra="gpu01"),
            "broken.yaml": broken,
            "also.yaml": also,
        },
    )
    assert errors_of(tmp_path) == [
        "also.yaml:3:12: extension: '0s' must be longer than zero",
        "broken.yaml:7:5: nodes[1].clas: unknown field 'clas' (did you mean 'class'?)",
        "broken.yaml:8:12: nodes[1].count: count 0 is not a node count: "
        "write 1 or more (drop the group for no workers)",
        "broken.yaml:9:14: nodes[1].labels['bad key!']: 'bad key!' is not a Kubernetes label key "
        "([prefix/]name, name at most 63 characters)",
        "broken.yaml:11:11: checks[0].name: 'Ready' is not a DNS-1123 label (lower-case letters, digits and '-', "
        "starting and ending with a letter or digit, at most 63 characters)",
        "broken.yaml:13:14: checks[0].timeout: 'soon' is not a duration like '1h', '90m' or '1h30m'",
    ]


def test_cross_field_rules_on_a_valid_file(tmp_path: Path) -> None:
    lab = """\
name: rules
title: Rules
nodes:
  - role: controlplane
    class: cp
    count: 2
  - name: node01
    role: worker
    class: wk
    count: 3
  - role: worker
    class: cp
scripts:
  setup:
    - name: s
      run: /usr/bin/true
    - name: s
      node: node01
      role: all
      run: /usr/bin/true
"""
    write(tmp_path, {"node-classes.yaml": CLASSES, "rules.yaml": lab})
    assert [line.rsplit(": ", 1)[0].split(": ", 1)[0] for line in errors_of(tmp_path)] == [
        "rules.yaml:6:12",
        "rules.yaml:7:11",
        "rules.yaml:12:12",
        "rules.yaml:17:13",
        "rules.yaml:19:13",
    ]


def test_sandbox_default_duration_counts_against_the_maximum(tmp_path: Path) -> None:
    sandbox = "name: box\ntitle: Box\nkind: sandbox\nnodes: [{role: controlplane, class: cp}]\n"
    write(tmp_path, {"node-classes.yaml": CLASSES, "box.yaml": sandbox})
    assert errors_of(tmp_path, max_duration=timedelta(hours=1)) == [
        "box.yaml:3:7: kind: duration 2h is longer than the maximum 1h (setting max_lab_duration)"
    ]


def test_a_broken_node_class_is_not_reported_again_by_the_labs_using_it(tmp_path: Path) -> None:
    classes = CLASSES.replace("kubernetes_version: 1.31.4\n", "kubernetes_version: 1.31.4\n    memory: 1.5GB\n", 1)
    write(tmp_path, {"node-classes.yaml": classes, "good.yaml": GOOD_LAB.format(extra="gpu01")})
    assert errors_of(tmp_path) == [
        "node-classes.yaml:6:13: node_classes[0].memory: '1.5GB' is not a Kubernetes quantity "
        "(write e.g. 1536Mi or 2Gi; suffixes Ki Mi Gi Ti Pi Ei or k M G T P E)"
    ]


def test_missing_node_classes_file_and_odd_files(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": "", "b.yaml": "- just\n- a list\n", "c.yaml": "a: 1\n---\nb: 2\n"})
    assert errors_of(tmp_path) == [
        "node-classes.yaml:1:1: (file): missing: node classes live in node-classes.yaml",
        "a.yaml:1:1: (root): the file is empty",
        "b.yaml:1:1: (root): expected a mapping of fields, got list",
        "c.yaml:2:1: (yaml): expected a single document in the stream but found another document",
    ]
    assert errors_of(tmp_path / "nope")[0].endswith("(file): not a directory")


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("registry.lab.internal/labrador/k8s-node:v1.31.4-r3", True),
        ("registry.lab.internal:5000/labrador/k8s-node:v1", True),
        ("registry.lab.internal/k8s-node@sha256:" + "0" * 64, True),
        ("registry.lab.internal/k8s-node:v1@sha256:" + "0" * 64, True),
        ("registry.lab.internal:5000/labrador/k8s-node", False),  # the port is not a tag
        ("registry.lab.internal/k8s-node:latest", False),
        ("registry.lab.internal/k8s-node@sha256:abc", False),
        ("Registry Lab/k8s-node:v1", False),
    ],
)
def test_pinned_images(image: str, pinned: bool) -> None:
    data = {"name": "x", "role": "worker", "image": image, "kubernetes_version": "1.31.4"}
    if pinned:
        assert NodeClass.model_validate(data).image == image
    else:
        with pytest.raises(ValidationError, match="image"):
            NodeClass.model_validate(data)


def test_quantities() -> None:
    assert quantity_bytes("1536Mi") == 1536 * 2**20
    assert quantity_bytes("2G") == 2 * 10**9
    with pytest.raises(ValueError, match=r"1\.5GB"):
        quantity_bytes("1.5GB")


def test_lab_keeps_its_invariants_outside_the_loader() -> None:
    cp = LabNode(name="controlplane", role=Role.CONTROLPLANE, node_class="cp")
    lab = Lab(name="x", title="X", nodes=[cp], checks=[Check(name="c", run="/usr/bin/true")])
    assert Lab.model_validate_json(lab.model_dump_json()) == lab  # what a workflow input carries
    with pytest.raises(ValidationError, match="2 control planes"):
        Lab(name="x", title="X", nodes=[cp, cp.model_copy(update={"name": "cp2"})])
    with pytest.raises(ValidationError, match="'node01' is not a node of this lab"):
        Lab(name="x", title="X", nodes=[cp], checks=[Check(name="c", node="node01", run="/usr/bin/true")])


def test_cross_field_rules_also_run_on_a_file_with_schema_errors(tmp_path: Path) -> None:
    lab = """\
name: mixed
title: Mixed
duration: 9h
nodes:
  - role: controlplane
    class: cp
  - role: worker
    class: nope
    count: 0
checks:
  - name: a
    node: node07
    run: /usr/bin/true
    expect: {stdout: "("}
  - name: b
    node: Node_1
    run: /usr/bin/true
"""
    write(tmp_path, {"node-classes.yaml": CLASSES, "mixed.yaml": lab})
    assert [
        line.split(": ")[1] + " @" + line.split(":")[1] for line in errors_of(tmp_path, max_duration=timedelta(hours=4))
    ] == [
        "duration @3",  # cross-field: beyond the maximum
        "nodes[1].class @8",  # cross-file: no such class
        "nodes[1].count @9",  # schema
        "checks[0].node @12",  # cross-field: node07 is not a node (count 0 read as 1: node01 exists)
        "checks[0].expect.stdout @14",  # schema
        "checks[1].node @16",  # schema only: not also "not a node of this lab"
    ]


def test_a_node_with_an_unreadable_role_does_not_cascade(tmp_path: Path) -> None:
    lab = """\
name: typo
title: Typo
nodes:
  - role: control-plane
    class: cp
checks:
  - name: a
    node: controlplane
    run: /usr/bin/true
"""
    write(tmp_path, {"node-classes.yaml": CLASSES, "typo.yaml": lab})
    [only] = errors_of(tmp_path)
    assert only.startswith("typo.yaml:4:11: nodes[0].role: Input should be 'controlplane' or 'worker'")


def test_a_trailing_newline_is_not_a_valid_name() -> None:
    # `$` in Python regexes also matches before a final newline; names end up in Kubernetes objects.
    with pytest.raises(ValidationError, match="DNS-1123"):
        LabNode(name="node01\n", role=Role.WORKER, node_class="wk")
