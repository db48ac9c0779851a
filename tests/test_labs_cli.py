"""`labrador labs validate|list|schema`: exit codes, one located error per line, --json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labrador.cli.main import app
from labs.schema import lab_schema, node_classes_schema
from tests.test_catalog_bad_labs import EXPECTED

ROOT = Path(__file__).resolve().parent.parent
BAD = "tests/fixtures/bad_labs"
ERROR_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<column>\d+): (?P<path>\S+): (?P<message>.+)$")


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """No LABRADOR_* variables, no user config file, no dev stack state: settings are the defaults."""
    for key in list(os.environ):
        if key.startswith("LABRADOR_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return dict(os.environ)


def labrador(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "labrador", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_validate_the_real_catalog_exits_0(clean_env: dict[str, str]) -> None:
    result = labrador(clean_env, "labs", "validate", "labs/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ") and result.stderr == ""


def test_validate_bad_labs_exits_1_with_one_located_line_per_problem(clean_env: dict[str, str]) -> None:
    result = labrador(clean_env, "labs", "validate", BAD)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    parsed = [ERROR_LINE.match(line) for line in lines]
    assert all(parsed), lines
    got = sorted((Path(m["file"]).name, int(m["line"]), m["path"]) for m in parsed if m)
    want = sorted((file, line, path) for file, cases in EXPECTED.items() for line, path, _ in cases)
    assert got == want
    assert all(m["file"].startswith(BAD + "/") for m in parsed if m)  # as the user named the directory


def test_validate_json_lists_the_errors(clean_env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["labs", "validate", str(ROOT / BAD), "--json"], env=clean_env)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert {"file", "line", "column", "path", "message"} == set(report["errors"][0])
    assert len(report["errors"]) == sum(len(cases) for cases in EXPECTED.values())
    ok = CliRunner().invoke(app, ["labs", "validate", str(ROOT / "labs"), "--json"], env=clean_env)
    assert ok.exit_code == 0 and json.loads(ok.stdout) == {"valid": True, "labs": 8, "node_classes": 7}


def test_validate_defaults_to_the_catalog_dir_setting(clean_env: dict[str, str]) -> None:
    assert CliRunner().invoke(app, ["labs", "validate"], env=clean_env).exit_code == 0
    env = {**clean_env, "LABRADOR_CATALOG_DIR": str(ROOT / BAD)}
    assert CliRunner().invoke(app, ["labs", "validate"], env=env).exit_code == 1


def test_max_duration_comes_from_settings(clean_env: dict[str, str]) -> None:
    env = {**clean_env, "LABRADOR_MAX_LAB_DURATION": "1h"}
    result = CliRunner().invoke(app, ["labs", "validate", str(ROOT / "labs")], env=env)
    assert result.exit_code == 1
    line = next(
        i
        for i, text in enumerate((ROOT / "labs/cluster-upgrade.yaml").read_text().splitlines(), 1)
        if text.startswith("duration:")
    )
    assert f"cluster-upgrade.yaml:{line}:11: duration: duration 1h30m is longer than the maximum 1h" in result.stderr
    assert "sandbox.yaml:" in result.stderr and ": kind: duration 2h is longer" in result.stderr
    bad = CliRunner().invoke(app, ["labs", "validate"], env={**clean_env, "LABRADOR_MAX_LAB_DURATION": "soon"})
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1 and "max_lab_duration" in bad.stderr


def test_missing_directory_is_one_line(clean_env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["labs", "validate", "/nonexistent/labs"], env=clean_env)
    assert result.exit_code == 1
    assert result.stderr == "/nonexistent/labs:1:1: (file): not a directory\n"


def test_list_table_and_json(clean_env: dict[str, str]) -> None:
    table = CliRunner().invoke(app, ["labs", "list"], env={**clean_env, "COLUMNS": "200"})
    assert table.exit_code == 0
    assert "kubelet-broken-worker" in table.stdout and "sandbox" in table.stdout
    listed = CliRunner().invoke(app, ["labs", "list", "--json"], env=clean_env)
    labs = {lab["name"]: lab for lab in json.loads(listed.stdout)}
    assert len(labs) == 8
    assert [n["name"] for n in labs["sandbox"]["nodes"]] == ["controlplane", "node01", "node02"]
    assert labs["sandbox"]["nodes"][1]["class"] == "worker-v1-32"
    assert labs["sandbox"]["effective_duration"] == "2h" and labs["cluster-upgrade"]["duration"] == "1h30m"
    assert CliRunner().invoke(app, ["labs", "list", str(ROOT / BAD)], env=clean_env).exit_code == 1


def test_schema_prints_the_generated_schemas(clean_env: dict[str, str]) -> None:
    lab = CliRunner().invoke(app, ["labs", "schema", "--json"], env=clean_env)
    assert lab.exit_code == 0 and json.loads(lab.stdout) == lab_schema()
    classes = CliRunner().invoke(app, ["labs", "schema", "node-classes"], env=clean_env)
    assert json.loads(classes.stdout) == node_classes_schema()
    unknown = CliRunner().invoke(app, ["labs", "schema", "nodes"], env=clean_env)
    assert unknown.exit_code == 2 and unknown.stderr.startswith("error: schema: 'nodes'")
