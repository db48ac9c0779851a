"""`labrador lab ...`: start, watch, extend, check, pause, resume, reset and end students' lab sessions.

Every command finds Temporal through the settings (a running `labrador dev` stack is found without
flags). Exit codes: 0 ok, 1 refused (bad input, no lab running, a lab already running), 3 Temporal
unreachable.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel

from cluster.naming import InvalidName, validate_student_id
from labrador.cli.common import (
    EXIT_PENDING,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    JsonFlag,
    console,
    err_console,
    fail,
    print_json,
    seconds_option,
)
from labrador.cli.progress import PhaseLine, describe_phase, following
from labrador.cli.tables import Col, print_table
from labrador.client import LabClient, LabError, Pending, TemporalUnreachable
from labrador.settings import Settings, SettingsError, catalog_limits, load_settings
from labs.models import Catalog
from workflows.models import TERMINAL_PHASES, CheckReport, LabStatus, Phase, WaitReadyResult

T = TypeVar("T")
RETRY_PAUSE = 1.0
START_RETRY_WINDOW = 30.0
"""Without --wait, `start` retries a transient outage this long (with --wait: until --timeout)."""

lab_app = typer.Typer(
    help="Students' lab sessions: start, status, extend, check, pause, resume, reset, end, list.",
    no_args_is_help=True,
)

StudentOpt = Annotated[str, typer.Option("--student", "-s", help="student ID")]


def _student(student: str, *, new: bool = False) -> str:
    """Refuse a bad student ID before anything is contacted (upper case only for labs that may predate
    the lower-case rule: see cluster.naming.validate_student_id)."""
    try:
        return validate_student_id(student, existing=not new)
    except InvalidName as exc:
        fail(str(exc))


def _run(action: Callable[[LabClient], Awaitable[T]], *, lab: str | None = None) -> T:
    """Settings, then (with `lab`) the catalog and that lab, all refused before Temporal is contacted."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        fail(str(exc))
    extra: dict[str, Any] = {}
    if lab is not None:
        extra["catalog"] = _catalog_with(settings, lab)

    async def go() -> T:
        client = await LabClient.connect(settings, **extra)
        return await action(client)

    try:
        return asyncio.run(go())
    except TemporalUnreachable as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    except Pending as exc:
        fail(str(exc), EXIT_PENDING)
    except LabError as exc:
        fail(str(exc))


def _catalog_with(settings: Settings, lab: str) -> Catalog:
    from labs.loader import CatalogError, load_catalog

    try:
        catalog = load_catalog(settings.catalog_dir, **catalog_limits(settings))
    except CatalogError as exc:
        fail(f"catalog {settings.catalog_dir} is invalid ({len(exc.errors)} errors): run `labrador labs validate`")
    if lab not in catalog.labs:
        fail(f"--lab: {lab!r} is not in the catalog (known labs: {', '.join(sorted(catalog.labs)) or 'none'})")
    return catalog


async def _retrying(action: Callable[[], Awaitable[T]], deadline: float) -> T:
    """Run `action` again across a transient Temporal outage until `deadline` (monotonic): the actions
    retried here are idempotent (start returns the running session, wait_ready is a poll)."""
    while True:
        try:
            return await action()
        except TemporalUnreachable:
            if time.monotonic() + RETRY_PAUSE >= deadline:
                raise
            await asyncio.sleep(RETRY_PAUSE)


def _key_path(settings: Settings, session_id: str) -> Path:
    return settings.data_dir / "keys" / f"{session_id}.key"


def _key_file(settings: Settings, session_id: str, private_key: str) -> Path:
    """The session's private key in a 0600 file: never printed to a terminal or a log. Removed by
    `lab end`, or by the first `lab status` that sees the session over (`_forget_key`)."""
    directory = settings.data_dir / "keys"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _key_path(settings, session_id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode above applies only to a new file; tighten one left by anything else
    with os.fdopen(fd, "w") as handle:
        handle.write(private_key if private_key.endswith("\n") else private_key + "\n")
    return path


async def _ssh_details(
    client: LabClient, student: str, session_id: str, seconds: float, result: WaitReadyResult | None = None
) -> dict[str, Any]:
    """Wait (at most `seconds`) until the lab answers with credentials, write the key file, return
    the ssh details. `result`: an answer already in hand (start's update-with-start)."""
    deadline = time.monotonic() + seconds
    while not (result and (result.ready or result.phase in TERMINAL_PHASES)) and time.monotonic() < deadline:
        poll = timedelta(seconds=min(20.0, max(1.0, deadline - time.monotonic())))
        result = await _retrying(functools.partial(client.wait_ready, student, poll), deadline)
    if result is None or not result.ready:
        phase = result.phase if result else "unknown"
        reason = f": {result.reason}" if result and result.reason else ""
        raise LabError(f"the lab of {student!r} is not ready (phase {phase}{reason})")
    assert result.endpoint is not None and result.private_key is not None
    key = _key_file(client.settings, session_id, result.private_key)
    return {
        "host": result.endpoint.host, "port": result.endpoint.port, "username": result.endpoint.username,
        "private_key_file": str(key), "deadline": result.deadline,
    }


def _print_ssh(ready: dict[str, Any]) -> None:
    console.print(f"ready until {ready['deadline']:%H:%M:%S} UTC:")
    console.print(f"  ssh -i {ready['private_key_file']} -p {ready['port']} {ready['username']}@{ready['host']}")


def _then_new_ssh(
    student: str,
    timeout: float,
    as_json: bool,
    key: str,
    client_call: Callable[[LabClient], Awaitable[BaseModel]],
    summary: Callable[[dict[str, Any]], str],
    exclude: set[str] | None = None,
) -> None:
    """For commands after which the lab has new SSH details (resume, reset): run `client_call`, wait
    (at most `timeout`) for the SSH details, then print both (`{key: ..., "ready": ...}` under --json,
    else the `summary` line of the result and the ssh command)."""

    async def action(client: LabClient) -> dict[str, Any]:
        done = await client_call(client)
        status = await client.status(student)
        out: dict[str, Any] = {key: done.model_dump(mode="json", exclude=exclude)}
        out["ready"] = await _ssh_details(client, student, status.session_id or student, timeout)
        return out

    out = _run(action)
    if as_json:
        print_json(out)
        return
    console.print(summary(out[key]))
    _print_ssh(out["ready"])


def _forget_key(session_id: str | None) -> None:
    """Delete the private key file of a session that is over (or ending): the nodes it opened are
    gone, and a key left on disk is a key left to steal."""
    if not session_id:
        return
    try:
        _key_path(load_settings(), session_id).unlink(missing_ok=True)
    except (SettingsError, OSError):
        pass  # nothing was written where these settings point


NODE_COLUMNS = (
    Col("node"), Col("id", drop=2, shrink=True), Col("role"), Col("warm", drop=1), Col("address", shrink=True),
    Col("healthy"),
)


def _print_status(status: LabStatus) -> None:
    console.print(f"[bold]{status.student_id}[/bold] · lab {status.lab_name} · phase [bold]{status.phase}[/bold]")
    if status.paused_at and status.pause_expires_at:
        console.print(f"paused since {status.paused_at:%H:%M:%S} UTC; resume before {status.pause_expires_at:%H:%M:%S}"
                      " UTC or the lab ends (labrador lab resume)")
    elif status.deadline:
        console.print(f"deadline {status.deadline:%Y-%m-%d %H:%M:%S} UTC ({status.extensions_used} extensions used)")
    if status.reason:
        console.print(f"reason: {status.reason}" + (f" ({status.detail})" if status.detail else ""))
    if status.nodes:
        print_table(console, NODE_COLUMNS, [
            [node.name, node.node_id, node.role, "yes" if node.warm else "no", node.address or "-",
             "yes" if node.healthy else "NO"]
            for node in status.nodes
        ])
    if status.last_check:
        console.print(f"last check: {status.last_check.score}/{status.last_check.max_score} points")


@lab_app.command("start")
def start(
    student: StudentOpt,
    lab: Annotated[str, typer.Option("--lab", "-l", help="lab name from the catalog")],
    wait: Annotated[bool, typer.Option("--wait", help="wait until ready and write the SSH key")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="seconds --wait waits at most", callback=seconds_option)
    ] = 900.0,
    as_json: JsonFlag = False,
) -> None:
    """Start a lab for a student (one lab per student at a time)."""
    _student(student, new=True)

    async def action(client: LabClient) -> dict[str, Any]:
        deadline = time.monotonic() + (timeout if wait else min(timeout, START_RETRY_WINDOW))
        first_wait = timedelta(seconds=min(20.0, timeout)) if wait else None

        async def phase() -> str:
            return describe_phase(await client.status(student))

        # On a terminal, the phase as it changes (stderr); under --json or without a TTY: nothing.
        with PhaseLine(err_console, enabled=wait and not as_json) as line:
            async with following(line, phase):
                # Retried across a transient outage: start is idempotent for the same lab (reuse_running).
                started = await _retrying(
                    lambda: client.start(student, lab, wait=first_wait, reuse_running=True), deadline
                )
                out: dict[str, Any] = {"started": started.model_dump(mode="json", exclude={"ready"})}
                if not wait:
                    return out
                out["ready"] = await _ssh_details(
                    client, student, started.session_id, max(0.0, deadline - time.monotonic()), started.ready
                )
        return out

    out = _run(action, lab=lab)
    if as_json:
        print_json(out)
        return
    started = out["started"]
    verb = "already running:" if started.get("existing") else "started"
    console.print(f"{verb} lab {started['lab_name']} for {started['student_id']} (session {started['session_id']})")
    if "ready" in out:
        _print_ssh(out["ready"])


@lab_app.command("status")
def status(student: StudentOpt, as_json: JsonFlag = False) -> None:
    """Phase, deadline, nodes and last check of a student's lab (also of the last one that ended)."""
    _student(student)
    result = _run(lambda client: client.status(student))
    if result.phase in TERMINAL_PHASES:
        _forget_key(result.session_id)
    if as_json:
        print_json(result)
    else:
        _print_status(result)


@lab_app.command("extend")
def extend(student: StudentOpt, as_json: JsonFlag = False) -> None:
    """Give a running lab more time (the lab's `extension`, at most `max_extensions` times)."""
    _student(student)
    result = _run(lambda client: client.extend(student))
    if as_json:
        print_json(result)
    else:
        console.print(
            f"extended: deadline {result.deadline:%Y-%m-%d %H:%M:%S} UTC, {result.extensions_left} extensions left"
        )


@lab_app.command("check")
def check(student: StudentOpt, as_json: JsonFlag = False) -> None:
    """Run the lab's checks now and show the results; the lab goes on."""
    _student(student)
    report = _run(lambda client: client.check(student))
    if as_json:
        print_json(report)
        return
    _print_report(report)


CHECK_COLUMNS = (Col("check", shrink=True, min_width=16), Col("node", drop=1), Col("passed"), Col("points"))


def _print_report(report: CheckReport) -> None:
    print_table(console, CHECK_COLUMNS, [
        [item.name, item.node, "yes" if item.passed else "no", f"{item.points}/{item.max_points}"]
        for item in report.results
    ], title=f"{report.score}/{report.max_score} points")


@lab_app.command("pause")
def pause(student: StudentOpt, as_json: JsonFlag = False) -> None:
    """Pause a lab: the clock stops, SSH closes, the VMs are frozen in place (resume to go on)."""
    _student(student)
    result = _run(lambda client: client.pause(student))
    if as_json:
        print_json(result)
        return
    console.print(
        f"paused at {result.paused_at:%H:%M:%S} UTC; resume before {result.expires_at:%H:%M:%S} UTC or the lab ends "
        f"({result.pauses_left} pauses left): labrador lab resume --student {student}"
    )


@lab_app.command("resume")
def resume(
    student: StudentOpt,
    timeout: Annotated[
        float, typer.Option("--timeout", help="seconds to wait for the SSH details", callback=seconds_option)
    ] = 300.0,
    as_json: JsonFlag = False,
) -> None:
    """Resume a paused lab: the VMs run again, their clocks are set, SSH opens (maybe on a new port)."""
    _student(student)
    _then_new_ssh(
        student, timeout, as_json, "resumed", client_call=lambda client: client.resume(student),
        summary=lambda resumed: f"resumed after {resumed['paused_seconds']:.0f} s paused",
    )


@lab_app.command("reset")
def reset(
    student: StudentOpt,
    timeout: Annotated[
        float, typer.Option("--timeout", help="seconds to wait for the SSH details", callback=seconds_option)
    ] = 300.0,
    as_json: JsonFlag = False,
) -> None:
    """Give a running lab fresh nodes (same lab, same session); waits until they are ready, like
    `start --wait`, and prints the new SSH details. The old nodes are deleted."""
    _student(student)
    _then_new_ssh(
        student, timeout, as_json, "reset", client_call=lambda client: client.reset(student),
        summary=lambda done: f"reset: fresh nodes ({done['resets_left']} resets left)", exclude={"nodes"},
    )


@lab_app.command("end")
def end(
    student: StudentOpt,
    reason: Annotated[str, typer.Option("--reason", help="recorded as the session's reason")] = "ended by student",
    as_json: JsonFlag = False,
) -> None:
    """End a student's running lab: final grading, then teardown."""
    _student(student)
    result = _run(lambda client: client.end(student, reason))
    _forget_key(result.session_id)
    if as_json:
        print_json(result)
    else:
        console.print(f"ending lab {result.lab_name} for {result.student_id} (phase {result.phase})")


@lab_app.command("list")
def list_sessions(
    phase: Annotated[str | None, typer.Option("--phase", "-p", help="only sessions in this phase")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Sessions by phase (default: every running session)."""
    if phase is not None and phase not in {p.value for p in Phase}:  # refused before Temporal is contacted
        fail(f"--phase: {phase!r} is not one of {', '.join(p.value for p in Phase)}", EXIT_USAGE)
    sessions = _run(lambda client: client.list(phase))
    if as_json:
        print_json(sessions)
        return
    _print_sessions(sessions)


SESSION_COLUMNS = (
    Col("student", shrink=True), Col("lab", shrink=True, min_width=16), Col("phase"), Col("started", drop=2),
    Col("status", drop=1),
)


def _print_sessions(sessions: list[Any]) -> None:
    print_table(console, SESSION_COLUMNS, [
        [item.student_id or "?", item.lab_name or "?", item.phase or "?",
         f"{item.started_at:%Y-%m-%d %H:%M:%S}" if item.started_at else "-", item.status]
        for item in sessions
    ])


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
