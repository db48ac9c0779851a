"""Lab files from strangers (#16 items 3-6): bounded size, alias expansion and nesting; counts and
sizes against the node classes and the global cap; nothing outside the catalog directory is read or
echoed; check patterns cannot backtrack; every refusal is located (FILE:LINE:COL) and fast."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from labs.check_regex import stdout_matches
from labs.loader import CatalogError, LocatedError, load_catalog
from labs.models import MAX_LAB_NODES, quantity_bytes
from tests.catalog_texts import node_class

CLASSES = "node_classes:\n" + node_class("cp", "controlplane") + node_class(
    "wk", "worker", more="    memory: {worker_memory}\n")

LAB = """\
name: lab
title: Lab
{extra}
nodes:
  - role: controlplane
    class: cp
  - role: worker
    class: wk
    count: {count}
checks:
  - name: ok
    run: echo ok
    expect: {{stdout: {pattern}}}
scripts:
  setup:
    - name: prepare
      run: {script}
"""


def catalog(
    tmp_path: Path, *, lab: str | None = None, count: object = 1, pattern: str = "'^ok$'", script: str = "'true'",
    extra: str = "", worker_memory: str = "1126Mi", **limits: object,
) -> list[LocatedError]:
    (tmp_path / "node-classes.yaml").write_text(CLASSES.format(worker_memory=worker_memory))
    (tmp_path / "lab.yaml").write_text(lab if lab is not None else LAB.format(
        count=count, pattern=pattern, script=script, extra=extra))
    started = time.monotonic()
    try:
        load_catalog(tmp_path, **limits)  # type: ignore[arg-type]
    except CatalogError as exc:
        errors = exc.errors
    else:
        errors = []
    assert time.monotonic() - started < 5, "validation must never take long"
    return errors


def only(errors: list[LocatedError], words: str) -> LocatedError:
    assert len(errors) == 1 and words in errors[0].message, errors
    return errors[0]


def test_the_template_is_valid(tmp_path: Path) -> None:
    assert catalog(tmp_path) == []


# --- YAML: aliases, nesting, size, encoding ------------------------------------------------------

def bomb(levels: int, width: int) -> str:
    text = "a0: &a0 [" + ", ".join(["x"] * width) + "]\n"
    for i in range(1, levels):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]\n"
    return text


@pytest.mark.parametrize(("levels", "width"), [(5, 10), (9, 10), (20, 3), (30, 2)])
def test_an_alias_bomb_is_refused_at_once_and_located(tmp_path: Path, levels: int, width: int) -> None:
    [error] = catalog(tmp_path, lab="name: lab\ntitle: t\n" + bomb(levels, width))
    assert "expands to more than" in error.message or "more than 64 aliases" in error.message, error
    assert error.file.endswith("lab.yaml") and error.line > 2


def test_too_many_aliases_and_recursive_aliases_are_refused(tmp_path: Path) -> None:
    many = "name: lab\ntitle: t\nitems: &x [1]\nmore: [" + ", ".join(["*x"] * 100) + "]\n"
    only(catalog(tmp_path, lab=many), "aliases")
    recursive = "name: lab\ntitle: t\nnodes: &n [*n]\n"
    assert catalog(tmp_path, lab=recursive)  # refused (PyYAML or the expansion check), never a hang


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    error = only(catalog(tmp_path, lab="name: lab\ntitle: t\nx: " + "[" * 5000 + "]" * 5000 + "\n"), "nested deeper")
    assert error.line == 3


def test_a_large_or_binary_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    only(catalog(tmp_path, lab="name: lab\n# " + "x" * 300_000 + "\n"), "larger than 128 KiB")
    (tmp_path / "lab.yaml").write_bytes(b"name: lab\n\xff\xfe\x00binary")
    with pytest.raises(CatalogError) as caught:
        load_catalog(tmp_path)
    only(caught.value.errors, "not UTF-8")


def test_the_shared_build_recipes_of_node_classes_still_load(tmp_path: Path) -> None:
    from labrador.settings import PACKAGE_LABS_DIR

    assert load_catalog(PACKAGE_LABS_DIR).node_classes  # node-classes.yaml uses a few anchors


# --- counts and sizes ----------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1_000_000_000, 1000, MAX_LAB_NODES, "99999999999999999999999"])
def test_a_huge_node_count_is_refused_at_the_field(tmp_path: Path, count: object) -> None:
    error = only(catalog(tmp_path, count=count), "")
    assert error.path == "nodes[1].count", error


def test_node_memory_is_bounded(tmp_path: Path) -> None:
    error = only(catalog(tmp_path, worker_memory="1Ti"), "more than 64Gi")
    assert error.file.endswith("node-classes.yaml") and error.path == "node_classes[1].memory"


@pytest.mark.parametrize("extra", ["max_extensions: 100000000", "max_extensions: 1e8", "extension: 9999999h",
                                   "duration: 400d", "duration: 99999999999999999999h"])
def test_extensions_and_durations_are_bounded(tmp_path: Path, extra: str) -> None:
    assert len(catalog(tmp_path, extra=extra)) == 1


def test_a_lab_that_can_never_fit_the_global_cap_is_refused_at_validation(tmp_path: Path) -> None:
    only(catalog(tmp_path, count=4, max_vms=3), "setting max_vms")
    only(catalog(tmp_path, count=4, max_memory_bytes=quantity_bytes("4Gi")), "setting max_memory")


def test_a_large_script_is_refused_with_the_limit_in_the_message(tmp_path: Path) -> None:
    error = only(catalog(tmp_path, script="'" + "x" * 40_000 + "'"), "at most 32,768 (32 KiB)")
    assert error.path == "scripts.setup[0].run" and len(str(error)) < 400
    only(catalog(tmp_path, script="'" + "x" * 5_000_000 + "'"), "larger than 128 KiB")  # the file itself


@pytest.mark.parametrize(("field", "limit"), [("run", "8,192"), ("hint", "4,096"), ("description", "4,096")])
def test_check_texts_are_bounded_with_the_limit_in_the_message(tmp_path: Path, field: str, limit: str) -> None:
    lab = LAB.format(count=1, pattern="ok", script="'true'", extra="")
    long = "y" * 9000
    replacement = f"    run: '{long}'\n" if field == "run" else f"    run: echo ok\n    {field}: '{long}'\n"
    lab = lab.replace("    run: echo ok\n", replacement)
    error = only(catalog(tmp_path, lab=lab), f"at most {limit}")
    assert error.path == f"checks[0].{field}"


def test_aliases_cannot_multiply_a_script_past_the_whole_lab_limit(tmp_path: Path) -> None:
    body = "x" * 30_000
    lab = ("name: lab\ntitle: t\nnodes:\n  - {role: controlplane, class: cp}\nscripts:\n  setup:\n"
           f"    - {{name: s0, run: &big '{body}'}}\n"
           + "".join(f"    - {{name: s{i}, run: *big}}\n" for i in range(1, 6)))
    only(catalog(tmp_path, lab=lab), "the whole lab is")


# --- files outside the catalog ---------------------------------------------------------------------

def test_a_symlink_out_of_the_catalog_is_refused_and_its_content_never_echoed(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$y$j9T$SECRETHASH:19000:0:99999:7:::\nname: [unclosed\n")
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    errors = catalog(catalog_dir)
    assert errors == []
    (catalog_dir / "evil.yaml").symlink_to(secret)
    (catalog_dir / "loop.yaml").symlink_to(catalog_dir / "loop.yaml")
    (catalog_dir / "fifo.yaml").unlink(missing_ok=True)
    os.mkfifo(catalog_dir / "fifo.yaml")
    with pytest.raises(CatalogError) as caught:
        load_catalog(catalog_dir)
    by_file = {Path(e.file).name: e for e in caught.value.errors}
    assert "outside the catalog" in by_file["evil.yaml"].message
    assert "loop.yaml" in by_file and "fifo.yaml" in by_file  # refused, not opened (a FIFO would block)
    assert "SECRETHASH" not in str(caught.value)


def test_a_symlinked_node_classes_file_outside_the_catalog_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "classes.yaml"
    outside.write_text(CLASSES.format(worker_memory="1126Mi"))
    inside = tmp_path / "catalog"
    inside.mkdir()
    (inside / "node-classes.yaml").symlink_to(outside)
    (inside / "lab.yaml").write_text(LAB.format(count=1, pattern="ok", script="'true'", extra=""))
    with pytest.raises(CatalogError) as caught:
        load_catalog(inside)
    assert any("outside the catalog" in e.message for e in caught.value.errors)


def test_an_error_never_echoes_more_than_a_trimmed_piece_of_a_line(tmp_path: Path) -> None:
    errors = catalog(tmp_path, lab="name: '" + "N" * 5000 + "'\ntitle: t\nnodes: []\n")
    assert errors and all(len(str(e)) < 500 and "\n" not in str(e) for e in errors)


# --- check patterns: RE2 ---------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["'(a)\\1'", "'(?=x)'", "'(?<!x)y'", "'x{1000}{1000}'", "'" + "a" * 2000 + "'"])
def test_patterns_re2_cannot_run_are_refused_at_validation(tmp_path: Path, pattern: str) -> None:
    error = only(catalog(tmp_path, pattern=pattern), "")
    assert error.path == "checks[0].expect.stdout"


def test_a_catastrophic_pattern_validates_and_matches_in_linear_time() -> None:
    started = time.monotonic()
    assert not stdout_matches("^(a+)+$", "a" * 16_000 + "b")
    assert not stdout_matches("(x+x+)+y", "x" * 16_000)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("pattern", "stdout", "matches"),
    [
        ("^ok$", "ok\n", True),  # one trailing newline is removed, as Python's `$` allowed
        ("^ok$", "ok", True),
        ("^ok$", "ok\n\n", False),
        ("^ok$", "x\nok\n", False),  # ^ and $ are the whole text
        ("(?m)^ok$", "x\nok\ny\n", True),  # per-line anchors on request
        ("--flag=1( |$)", "cmd --flag=1\n", True),
        ("^v1\\.32\\.0$", "v1.32.0\n", True),
    ],
)
def test_the_documented_semantics_of_stdout_patterns(pattern: str, stdout: str, matches: bool) -> None:
    assert stdout_matches(pattern, stdout) is matches


def test_the_catalog_as_a_whole_is_bounded(tmp_path: Path) -> None:
    catalog(tmp_path)
    filler = "# " + "x" * (120 * 1024) + "\nname: lab{i}\n"
    for i in range(70):  # 70 files of 120 KiB: more than 8 MiB together
        (tmp_path / f"lab{i:02d}.yaml").write_text(filler.format(i=i))
    started = time.monotonic()
    with pytest.raises(CatalogError) as caught:
        load_catalog(tmp_path)
    assert any("larger than 8 MiB together" in e.message for e in caught.value.errors)
    assert time.monotonic() - started < 10


def test_a_lab_and_the_node_classes_it_travels_with_are_bounded_together(tmp_path: Path) -> None:
    recipe = "'" + "y" * 30_000 + "'"
    classes = CLASSES.format(worker_memory="1126Mi") + "".join(
        f"  - name: big{i}\n    role: worker\n    image: registry.lab.internal/labrador/k8s-node:v1.31.4-r3\n"
        f"    kubernetes_version: 1.31.4\n    build:\n      base_image: registry.lab.internal/base:1\n"
        f"      install_script: {recipe}\n" for i in range(4))
    (tmp_path / "node-classes.yaml").write_text(classes)
    (tmp_path / "lab.yaml").write_text("name: lab\ntitle: t\nnodes:\n  - {role: controlplane, class: cp}\n"
                                       + "".join(f"  - {{role: worker, class: big{i}}}\n" for i in range(4)))
    with pytest.raises(CatalogError) as caught:
        load_catalog(tmp_path)
    only(caught.value.errors, "with its node classes")
