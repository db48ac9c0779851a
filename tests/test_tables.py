"""Every table command stays one line per item at 80 and at 200 columns; `--json` keeps every field.

`labs list` and `image list` run through the CLI (COLUMNS set, as a terminal would); the commands that
need a running lab or pool (`lab status`, `lab check`, `lab list`, `pool status`, `admin end --dry-run`,
`webhooks dead`) are rendered by the same functions the commands call, from the models their clients
return (tests/pool/test_pool_cli.py runs `pool status` itself at 80 columns). A guard fails when a
CLI module builds a table by hand or a new table command is not listed here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

from labrador.admin import Target
from labrador.cli import admin_cmd, common, lab_cmd, pool_cmd, webhooks_cmd
from labrador.cli.main import app
from labrador.cli.tables import Col, fitted_table
from labrador.client import SessionSummary
from labrador.webhooks import DeadLetter
from workflows.models import BoundNode, CheckReport, CheckResult, LabStatus, Phase

WIDTHS = (80, 200)
LONG = "An exceedingly long title that no eighty column terminal can show in one piece, by design"
NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def body_lines(output: str, width: int) -> list[str]:
    """The table rows of a rendering (between the header rule and the bottom border); every line fits."""
    lines = output.splitlines()
    for line in lines:
        assert Text(line).cell_len <= width, f"wider than {width}: {line!r}"
    start = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    end = next(i for i, line in enumerate(lines) if line.startswith("└"))
    return lines[start + 1:end]


def assert_one_line_per_row(output: str, width: int, keys: list[str]) -> None:
    rows = body_lines(output, width)
    assert len(rows) == len(keys), f"{len(keys)} items on {len(rows)} lines at {width} columns:\n{output}"
    for row, key in zip(rows, keys, strict=True):
        assert key[:10] in row, f"{key!r} is not on its own line at {width} columns:\n{output}"


@contextmanager
def console_of(width: int) -> Iterator[io.StringIO]:
    """The CLI's console, writing to a buffer at a given width (as on a terminal that wide)."""
    buffer = io.StringIO()
    saved = common.console
    fake = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    for module in (common, lab_cmd, pool_cmd, admin_cmd, webhooks_cmd):
        module.console = fake  # type: ignore[attr-defined]
    try:
        yield buffer
    finally:
        for module in (common, lab_cmd, pool_cmd, admin_cmd, webhooks_cmd):
            module.console = saved  # type: ignore[attr-defined]


@pytest.mark.parametrize("width", WIDTHS)
def test_labs_list_fits_and_json_is_complete(width: int) -> None:
    result = CliRunner().invoke(app, ["labs", "list"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    listed = json.loads(CliRunner().invoke(app, ["labs", "list", "--json"]).stdout)
    assert_one_line_per_row(result.stdout, width, [lab["name"] for lab in listed])
    assert all(lab["title"] and "nodes" in lab and "checks" in lab for lab in listed)
    if width == 80:
        assert "The API server does not come back" not in result.stdout  # cut with an ellipsis
        assert "…" in result.stdout
    else:
        assert "The API server does not come back" in result.stdout and "hidden at this width" not in result.stdout


@pytest.mark.parametrize("width", WIDTHS)
def test_image_list_fits(width: int, tmp_path: Path) -> None:
    env = {"COLUMNS": str(width), "LABRADOR_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["image", "list"], env=env)
    assert result.exit_code == 0, result.output
    listed = json.loads(CliRunner().invoke(app, ["image", "list", "--json"], env=env).stdout)
    assert_one_line_per_row(result.stdout, width, [row["node_class"] for row in listed])
    assert all(row["base_image"].startswith("registry.lab.internal/") for row in listed)  # --json: whole


def status() -> LabStatus:
    nodes = [
        BoundNode(name=name, node_id=f"p-worker-v1-31-{i:010d}-long-node-identifier", role=role, warm=i % 2 == 0,
                  address=f"10.244.{i}.17", healthy=i != 2)
        for i, (name, role) in enumerate([("controlplane", "controlplane"), ("node01", "worker"), ("node02", "worker")])
    ]
    return LabStatus(student_id="alice@example.org", lab_name="kubelet-anonymous-access", phase=Phase.RUNNING,
                     started_at=NOW, deadline=NOW, nodes=nodes)


def report() -> CheckReport:
    results = [
        CheckResult(name=f"check-{i}-{LONG[:40].replace(' ', '-').lower()}", node="node01", passed=i % 2 == 0,
                    points=i, max_points=2, duration_seconds=0.1)
        for i in range(3)
    ]
    return CheckReport(results=results, score=2, max_score=6, checked_at=NOW)


def sessions() -> list[SessionSummary]:
    return [
        SessionSummary(student_id=f"student-{i}@a-rather-long-university-domain.example.org",
                       lab_name="kubelet-anonymous-access", phase="running", workflow_id=f"lab-session/s{i}",
                       run_id="r", started_at=NOW, status="RUNNING")
        for i in range(4)
    ]


def pool_data() -> dict[str, object]:
    image = "registry.lab.internal/labrador/k8s-node@sha256:" + "a" * 64
    classes = {
        name: {"node_class": name, "image": image, "free": 3, "provisioning": 1, "claimed": 12, "target": 6,
               "stale": 0, "drained": False, "why": "schedule 'weekdays 08-18'", "min": 6, "max": 12,
               "override": None}
        for name in ("cp-v1-31", "worker-v1-31", "worker-v1-31-pvc", "cp-v1-31-upgrade")
    }
    return {"classes": classes, "schedule": {"exists": True, "paused": False}, "total_vms": 40, "max_vms": 200,
            "total_memory_bytes": 40 * 2**30, "max_memory_bytes": 512 * 2**30, "exposed_ports_in_use": 3,
            "exposed_ports_capacity": 2768, "queue": []}


def dry_run() -> dict[str, object]:
    targets = [Target(student_id=f"student-{i}@a-rather-long-university-domain.example.org",
                      lab="kubelet-anonymous-access", phase="running", started_at=NOW) for i in range(3)]
    return {"dry_run": True, "selector": "lab kubelet-anonymous-access", "count": len(targets),
            "sessions": [t.model_dump(mode="json") for t in targets]}


def dead_letters() -> list[DeadLetter]:
    return [DeadLetter(workflow_id=f"webhook/lab.ready/{i:04d}-s-alice-1a2b3c", run_id="r", event_id=f"e{i}",
                       type="lab.ready", closed_at=NOW,
                       dead={"https://portal.a-rather-long-university-domain.example.org/hooks/labrador/events":
                             "HTTP 503 Service Unavailable after 12 attempts: upstream connect error " + LONG})
            for i in range(3)]


RENDERERS: dict[str, tuple[Callable[[], None], list[str]]] = {
    "admin end --dry-run": (lambda: admin_cmd._print_dry_run(dry_run()),
                            [f"student-{i}" for i in range(3)]),
    "webhooks dead": (lambda: webhooks_cmd._print_dead(dead_letters()), [d.workflow_id for d in dead_letters()]),
    "lab status": (lambda: lab_cmd._print_status(status()), ["controlplane", "node01", "node02"]),
    "lab check": (lambda: lab_cmd._print_report(report()), [r.name for r in report().results]),
    "lab list": (lambda: lab_cmd._print_sessions(sessions()), [s.student_id or "" for s in sessions()]),
    "pool status": (lambda: pool_cmd._print_status(pool_data()), list(pool_data()["classes"])),  # type: ignore[call-overload]
}


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("command", sorted(RENDERERS))
def test_every_other_table_command_fits(command: str, width: int) -> None:
    render, keys = RENDERERS[command]
    with console_of(width) as buffer:
        render()
    assert_one_line_per_row(buffer.getvalue(), width, keys)


def test_what_does_not_fit_is_cut_then_dropped_and_named() -> None:
    columns = (Col("name"), Col("title", shrink=True, min_width=16), Col("extra", drop=1))
    rows = [["a", LONG, "x" * 30]]
    wide = Console(file=io.StringIO(), width=200)
    wide.print(fitted_table(columns, rows, width=200))
    assert LONG in wide.file.getvalue()  # type: ignore[attr-defined]
    narrow = Console(file=io.StringIO(), width=40)
    narrow.print(fitted_table(columns, rows, width=40))
    text = narrow.file.getvalue()  # type: ignore[attr-defined]
    assert "x" * 30 not in text and "hidden at this width: extra" in text.replace("\n", " ")
    assert_one_line_per_row(text, 40, ["a"])
    markup = Console(file=io.StringIO(), width=80)
    markup.print(fitted_table(columns, [["[bold]b[/bold]", "t", "e"]], width=80))
    assert "[bold]b[/bold]" in markup.file.getvalue()  # type: ignore[attr-defined]  # text, not markup


def test_every_table_of_the_cli_is_fitted() -> None:
    """A table built by hand (rich's Table) wraps its cells at 80 columns: every CLI table goes
    through labrador/cli/tables.py, and every command that prints one is rendered above."""
    cli = Path(__file__).resolve().parents[1] / "labrador" / "cli"
    by_hand = [path.name for path in sorted(cli.glob("*.py"))
               if path.name != "tables.py" and "Table(" in path.read_text()]
    assert by_hand == [], f"build these tables with tables.print_table: {by_hand}"
    printing = {path.name for path in cli.glob("*.py") if "print_table(console" in path.read_text()}
    assert printing == {"admin_cmd.py", "image_cmd.py", "lab_cmd.py", "labs_cmd.py", "pool_cmd.py",
                        "webhooks_cmd.py"}, "a new table command: add it to RENDERERS (or a CLI test) here"


def test_image_references_keep_the_end_that_tells_them_apart() -> None:
    prefix = "registry.lab.internal/labrador/a-long-repository-name/k8s-node"
    rows = [["cp", f"{prefix}:v1.31.4-r3"], ["wk", f"{prefix}:v1.32.0-r1"]]
    columns = (Col("class"), Col("image", shrink=True, keep_end=True))
    narrow = Console(file=io.StringIO(), width=40)
    narrow.print(fitted_table(columns, rows, width=40))
    lines = body_lines(narrow.file.getvalue(), 40)  # type: ignore[attr-defined]
    assert "v1.31.4-r3" in lines[0] and "v1.32.0-r1" in lines[1] and "…" in lines[0], lines
    wide = Console(file=io.StringIO(), width=200)
    wide.print(fitted_table(columns, rows, width=200))
    assert f"{prefix}:v1.31.4-r3" in wide.file.getvalue()  # type: ignore[attr-defined]
