"""Activities that act on lab nodes over SSH: credentials, setup, grading, teardown scripts.

Called by name (workflows.models.ActivityName). Failure rules:
- A setup step that ran and failed, or a node that cannot be reached after the runner's connection
  retries, fails RUN_SETUP with a non-retryable ApplicationError naming the node, the step and (for a
  script) its output. The message is encrypted in history by the failure converter.
- A check is run once: a failing or unreachable check is a result (passed=False), never an error.
- Teardown scripts are best effort: every failure becomes a ScriptResult, nothing raises.
- A host key other than the pinned one: non-retryable ApplicationError (setup), failed checks with
  the reason (grading; no command is sent), a failed ScriptResult (teardown).
Long steps heartbeat; RUN_SETUP resumes from its heartbeat details (lab scripts that completed and
host keys already pinned) so a retried attempt does not run a lab script twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import node_commands as commands
from cluster.background import running_beside
from cluster.models import SessionRef, SshEndpoint, SshTarget
from cluster.port import ClusterPort, ClusterUnavailable, PermanentClusterError
from cluster.settings import Settings
from cluster.ssh import (
    CommandInterrupted,
    CommandResult,
    HostKeyMismatch,
    RetryPolicy,
    SshError,
    SshRunner,
    SshUnreachable,
    excerpt,
    generate_key_pair,
    runner_from_settings,
)
from labs.check_regex import stdout_matches
from labs.models import Check, Lab, LabNode, Role, Script
from workflows.models import (
    ActivityName,
    BoundNode,
    CheckReport,
    CheckResult,
    ChecksInput,
    ClockStepInput,
    ClockStepResult,
    ExposeInput,
    ScriptResult,
    SessionCredentials,
    SetupInput,
    SetupResult,
    TeardownInput,
)

HEARTBEAT_EVERY = 2.0
CHECKS_PER_NODE = 4
"""At most this many checks run at once on one node (sshd's MaxStartups begins dropping at 10)."""
PLATFORM_STEP_TIMEOUT = 120.0
JOIN_TIMEOUT = 300.0
NODES_READY_TIMEOUT = 300
REASON_OUTPUT_CHARS = 2000
EXCERPT_CHARS = 1000
SETUP_INFRA_BUDGET = 300.0
"""Seconds RUN_SETUP keeps retrying transient infrastructure errors (the cluster API unavailable, a node
not accepting SSH yet) inside one attempt, heartbeating, before giving up. Bounded by the attempt's own
deadline; the session's provisioning_overdue timer bounds the whole preparation. Only the lab's own
script failing is final at once. Done here, not by Temporal's retry policy, so the workflow's commands
do not change (3 attempts within ~8 s used to end the lab on one short API outage)."""
SETUP_INFRA_BACKOFF = (0.5, 10.0)
TEARDOWN_RETRY = RetryPolicy(attempts=2, initial_backoff=0.5, connect_timeout=10.0)
CHECK_RETRY = RetryPolicy(attempts=3, initial_backoff=0.5, connect_timeout=10.0)
"""Checks answer a waiting student (the `check` update): give up on an unreachable node sooner."""
CLOCK_RETRY = RetryPolicy(attempts=3, initial_backoff=0.5, connect_timeout=10.0)
"""A just-unpaused guest may take a moment before its sshd answers again."""


class SetupProgress(BaseModel):
    """Heartbeat details of RUN_SETUP: what a retried attempt must not redo."""

    done: list[str] = Field(default_factory=list)
    scripts: list[ScriptResult] = Field(default_factory=list)
    host_keys: dict[str, str] = Field(default_factory=dict)


class SetupStepFailed(Exception):
    pass


def _nodes_for(script: Script, lab: Lab) -> list[LabNode]:
    if script.node is not None:
        return [n for n in lab.nodes if n.name == script.node]
    if script.role == "workers":
        return lab.workers
    if script.role == "all":
        return list(lab.nodes)
    return [lab.controlplane]


def check_passed(check: Check, result: CommandResult) -> bool:
    if result.timed_out:
        return False
    if check.expect.exit_code is not None and result.exit_code != check.expect.exit_code:
        return False
    # RE2 (labs/check_regex.py): linear in the output (capped at 16 KiB by the runner), so matching
    # on the event loop cannot stall the worker whatever pattern the lab file holds.
    return check.expect.stdout is None or stdout_matches(check.expect.stdout, result.stdout)


def score(results: Sequence[CheckResult]) -> tuple[int, int]:
    return sum(r.points for r in results), sum(r.max_points for r in results)


@contextlib.asynccontextmanager
async def heartbeating(details: Callable[[], Any], every: float = HEARTBEAT_EVERY) -> AsyncIterator[None]:
    """Heartbeat (with fresh details) while a long step runs; the SDK throttles what it sends."""

    async def beat() -> None:
        while True:
            activity.heartbeat(details())
            await asyncio.sleep(every)

    async with running_beside(beat):
        yield


def _infra_deadline() -> float:
    """Monotonic end of this attempt's infrastructure retries: the budget, or the attempt's own
    start-to-close deadline less a margin (its scripts still need their time), whichever is first."""
    budget = SETUP_INFRA_BUDGET
    timeout = activity.info().start_to_close_timeout
    if timeout is not None:
        budget = min(budget, max(0.0, timeout.total_seconds() / 2))
    return time.monotonic() + budget


async def _until(deadline: float, progress: SetupProgress, transient: type[Exception],
                 call: Callable[[], Any]) -> Any:
    """`call()` again on `transient` errors (backoff, heartbeating) until `deadline`, then the error."""
    pause, longest = SETUP_INFRA_BACKOFF
    while True:
        try:
            return await call()
        except transient as exc:
            if time.monotonic() + pause >= deadline:
                raise
            activity.logger.warning("setup: transient %s, retrying in %.0f s: %s", type(exc).__name__, pause, exc)
            activity.heartbeat(progress)
            await asyncio.sleep(pause)
            pause = min(longest, pause * 2)


def _resume_progress() -> SetupProgress:
    details = activity.info().heartbeat_details
    if not details:
        return SetupProgress()
    last = details[-1]
    if isinstance(last, SetupProgress):
        return last
    return SetupProgress.model_validate(last)


class ScriptActivities:
    def __init__(self, port: ClusterPort, settings: Settings, runner: SshRunner | None = None) -> None:
        self._port = port
        self._settings = settings
        self._runner = runner

    @property
    def runner(self) -> SshRunner:
        # Loaded lazily so a worker without SSH needs (tests, dry runs) never touches the key file.
        if self._runner is None:
            self._runner = runner_from_settings(self._settings)
        return self._runner

    def all(self) -> list[Callable[..., Any]]:
        return [self.create_session_credentials, self.run_setup, self.run_checks, self.run_teardown_scripts,
                self.step_guest_clocks]

    async def _setup_target(self, node: BoundNode, deadline: float, progress: SetupProgress) -> SshTarget:
        """The node's SSH target, retrying ClusterUnavailable until `deadline` (then Temporal's retry)."""
        return await _until(deadline, progress, ClusterUnavailable, lambda: self._target(node))

    async def _target(self, node: BoundNode) -> SshTarget:
        try:
            return await self._port.ssh_target(node.node_id)
        except ClusterUnavailable:
            raise  # Temporal retries it
        except PermanentClusterError as exc:
            raise ApplicationError(
                f"node {node.name!r} ({node.node_id}): no SSH target: {exc}", type="NodeNotFound", non_retryable=True
            ) from exc

    # --- credentials ---------------------------------------------------------------------------

    @activity.defn(name=ActivityName.CREATE_SESSION_CREDENTIALS)
    async def create_session_credentials(self, session: SessionRef) -> SessionCredentials:
        """A fresh ed25519 pair for the student. Only ever travels in encrypted payloads."""
        private_key, public_key = generate_key_pair(comment=f"labrador-student-{session.session_id}")
        return SessionCredentials(private_key=private_key, public_key=public_key)

    # --- setup ---------------------------------------------------------------------------------

    @activity.defn(name=ActivityName.RUN_SETUP)
    async def run_setup(self, data: SetupInput) -> SetupResult:
        progress = _resume_progress()
        for node in data.nodes:
            if node.host_key and node.name not in progress.host_keys:
                progress.host_keys[node.name] = node.host_key
        by_name = {n.name: n for n in data.nodes}
        missing = [n.name for n in data.lab.nodes if n.name not in by_name]
        if missing:
            raise ApplicationError(
                f"setup: lab nodes {missing} have no bound node", type="BadInput", non_retryable=True
            )
        deadline = _infra_deadline()
        targets = {n.name: await self._setup_target(n, deadline, progress) for n in data.nodes}
        lock = asyncio.Lock()  # first contacts to one node in parallel must pin one key

        async def step(node_name: str, step_name: str, command: str, seconds: float) -> CommandResult:
            try:
                async with lock:
                    pinned = progress.host_keys.get(node_name)
                result = await _until(deadline, progress, SshUnreachable, lambda: self.runner.run(
                    targets[node_name], command, timeout_seconds=seconds, host_key=pinned, node=node_name
                ))
            except HostKeyMismatch as exc:
                raise ApplicationError(
                    f"setup step {step_name!r} on node {node_name!r}: {exc}", type="HostKeyMismatch", non_retryable=True
                ) from exc
            except SshError as exc:
                raise ApplicationError(
                    f"setup step {step_name!r} on node {node_name!r}: {exc}", type="SshFailed", non_retryable=True
                ) from exc
            async with lock:
                pinned = progress.host_keys.setdefault(node_name, result.host_key)
            if pinned != result.host_key:  # two first contacts in parallel saw different keys
                raise ApplicationError(
                    f"setup step {step_name!r} on node {node_name!r}: the node presented two different host keys",
                    type="HostKeyMismatch", non_retryable=True,
                )
            return result

        async def platform_step(node_name: str, step_name: str, command: str, seconds: float) -> CommandResult:
            result = await step(node_name, step_name, command, seconds)
            if not result.ok:
                how = f"timed out after {seconds:g}s" if result.timed_out else f"exit code {result.exit_code}"
                raise ApplicationError(
                    f"setup step {step_name!r} failed on node {node_name!r} ({how}): "
                    f"{excerpt(result.output, REASON_OUTPUT_CHARS)}",
                    type="SetupFailed",
                    non_retryable=True,
                )
            return result

        async with heartbeating(lambda: progress):
            await self._bootstrap(data, by_name, platform_step)
            await self._setup_scripts(data, progress, step)
        script_order = {s.name: i for i, s in enumerate(data.lab.scripts.setup)}
        node_order = {n.name: i for i, n in enumerate(data.lab.nodes)}
        ordered = sorted(progress.scripts, key=lambda r: (script_order.get(r.script, -1), node_order.get(r.node, -1)))
        endpoint = None
        if data.expose is not None and all(r.exit_code == 0 and not r.timed_out for r in ordered):
            # The session's last platform step, here rather than in a call of its own (LEAN_START_PATCH):
            # SSH is reachable once setup succeeded, as before. Idempotent (create-or-get).
            endpoint = await _until(deadline, progress, ClusterUnavailable, lambda: self._expose(data.expose))
        return SetupResult(scripts=ordered, host_keys=dict(progress.host_keys), endpoint=endpoint)

    async def _expose(self, request: ExposeInput | None) -> SshEndpoint:
        assert request is not None
        try:
            return await self._port.expose(request.session_id, request.node_id)
        except ClusterUnavailable:
            raise  # `_until` tries again, then Temporal retries it
        except PermanentClusterError as exc:
            raise ApplicationError(f"expose SSH: {exc}", type=type(exc).__name__, non_retryable=True) from exc

    async def _bootstrap(
        self,
        data: SetupInput,
        by_name: dict[str, BoundNode],
        platform_step: Callable[[str, str, str, float], Any],
    ) -> None:
        lab = data.lab
        cp = lab.controlplane.name
        workers = lab.workers
        await platform_step(cp, "student-key", commands.install_authorized_key(data.student_public_key),
                            PLATFORM_STEP_TIMEOUT)
        if workers:
            created = await platform_step(cp, "session-key", commands.create_session_key(data.session.session_id),
                                          PLATFORM_STEP_TIMEOUT)
            try:
                session_public_key = commands.parse_public_key(created.stdout)
            except ValueError as exc:
                raise ApplicationError(
                    f"setup step 'session-key' on node {cp!r}: {exc}", type="SetupFailed", non_retryable=True
                ) from exc
            await asyncio.gather(*(
                platform_step(w.name, "trust-session-key", commands.install_authorized_key(session_public_key),
                              PLATFORM_STEP_TIMEOUT)
                for w in workers
            ))
            hosts = {w.name: by_name[w.name].address for w in workers if by_name[w.name].address}
            if hosts:
                await platform_step(cp, "ssh-config", commands.ssh_config(hosts),  # type: ignore[arg-type]
                                    PLATFORM_STEP_TIMEOUT)
        if lab.bootstrap != "kubeadm-join":
            return
        if workers:
            printed = await platform_step(cp, "join-command", commands.print_join_command(), PLATFORM_STEP_TIMEOUT)
            try:
                join = commands.parse_join_command(printed.stdout)
            except ValueError as exc:
                raise ApplicationError(
                    f"setup step 'join-command' on node {cp!r}: {exc}", type="SetupFailed", non_retryable=True
                ) from exc
            await asyncio.gather(*(
                platform_step(w.name, "kubeadm-join", commands.join_cluster(join, w.name), JOIN_TIMEOUT)
                for w in workers
            ))
        labels = commands.label_and_taint(list(lab.nodes))
        if labels is not None:
            await platform_step(cp, "node-labels", labels, PLATFORM_STEP_TIMEOUT + 180)
        if workers:
            await platform_step(cp, "nodes-ready", commands.wait_nodes_ready(NODES_READY_TIMEOUT),
                                NODES_READY_TIMEOUT + 30)

    async def _setup_scripts(
        self,
        data: SetupInput,
        progress: SetupProgress,
        step: Callable[[str, str, str, float], Any],
    ) -> None:
        for script in data.lab.scripts.setup:
            nodes = _nodes_for(script, data.lab)

            async def one(node: LabNode, script: Script = script) -> None:
                key = f"setup:{script.name}:{node.name}"
                if key in progress.done:
                    return
                result: CommandResult = await step(node.name, script.name, script.run,
                                                   script.timeout.total_seconds())
                record = _script_result(node.name, script.name, result)
                progress.scripts.append(record)
                progress.done.append(key)
                activity.heartbeat(progress)  # record it now: a retried attempt must not run it again
                if not result.ok:
                    how = (f"timed out after {script.timeout.total_seconds():g}s" if result.timed_out
                           else f"exit code {result.exit_code}")
                    raise ApplicationError(
                        f"setup script {script.name!r} failed on node {node.name!r} ({how}): "
                        f"{excerpt(result.output, REASON_OUTPUT_CHARS)}",
                        record,
                        type="SetupScriptFailed",
                        non_retryable=True,
                    )

            await asyncio.gather(*(one(node) for node in nodes))

    # --- checks --------------------------------------------------------------------------------

    @activity.defn(name=ActivityName.RUN_CHECKS)
    async def run_checks(self, data: ChecksInput) -> CheckReport:
        by_name = {n.name: n for n in data.nodes}
        limits = {name: asyncio.Semaphore(CHECKS_PER_NODE) for name in by_name}
        targets: dict[str, SshTarget | str] = {}
        for node in data.nodes:
            try:
                targets[node.name] = await self._target(node)
            except ApplicationError as exc:
                targets[node.name] = exc.message
        finished = 0
        runner = self.runner.with_retry(CHECK_RETRY)
        unreachable: dict[str, str] = {}  # one node found unreachable: its other checks fail at once

        async def one(check: Check) -> CheckResult:
            nonlocal finished
            node = by_name.get(check.node)
            target = targets.get(check.node)
            started = time.monotonic()

            def failed(why: str) -> CheckResult:
                return CheckResult(name=check.name, node=check.node, passed=False, points=0, max_points=check.points,
                                   duration_seconds=round(time.monotonic() - started, 3), output_excerpt=why)

            if node is None or target is None:
                return failed(f"node {check.node!r} is not part of this session")
            if isinstance(target, str):
                return failed(target)
            async with limits[check.node]:
                if check.node in unreachable:
                    return failed(unreachable[check.node])
                try:
                    result = await runner.run(target, check.run, timeout_seconds=check.timeout.total_seconds(),
                                              host_key=node.host_key, node=node.name)
                except SshError as exc:
                    if not isinstance(exc, CommandInterrupted):
                        unreachable[check.node] = f"not run: {exc}"
                    return failed(f"not run: {exc}")
                finally:
                    finished += 1
            passed = check_passed(check, result)
            return CheckResult(
                name=check.name,
                node=check.node,
                passed=passed,
                points=check.points if passed else 0,
                max_points=check.points,
                duration_seconds=result.duration_seconds,
                output_excerpt=excerpt(result.output, EXCERPT_CHARS),
            )

        async with heartbeating(lambda: finished):
            results = await asyncio.gather(*(one(c) for c in data.checks))
        total, maximum = score(results)
        return CheckReport(results=list(results), score=total, max_score=maximum, checked_at=datetime.now(UTC))

    # --- teardown ------------------------------------------------------------------------------

    @activity.defn(name=ActivityName.RUN_TEARDOWN_SCRIPTS)
    async def run_teardown_scripts(self, data: TeardownInput) -> SetupResult:
        by_name = {n.name: n for n in data.nodes}
        runner = self.runner.with_retry(TEARDOWN_RETRY)
        results: list[ScriptResult] = []
        async with heartbeating(lambda: len(results)):
            for script in data.scripts:
                names = [script.node] if script.node else [n.name for n in data.nodes if _runs_on(script, n)]
                for name in names:
                    node = by_name.get(name or "")
                    started = time.monotonic()
                    try:
                        if node is None:
                            raise SshError(f"node {name!r} is not part of this session")
                        target = await self._port.ssh_target(node.node_id)
                        result = await runner.run(target, script.run, timeout_seconds=script.timeout.total_seconds(),
                                                  host_key=node.host_key, node=node.name)
                        results.append(_script_result(node.name, script.name, result))
                    except Exception as exc:  # best effort: the session is being deleted anyway
                        activity.logger.warning("teardown script %s on %s: %s", script.name, name,
                                                type(exc).__name__)
                        results.append(ScriptResult(node=name or "", script=script.name, exit_code=None,
                                                    output=f"not run: {exc}",
                                                    duration_seconds=round(time.monotonic() - started, 3)))
        return SetupResult(scripts=results)


    # --- clocks after a pause ----------------------------------------------------------------

    @activity.defn(name=ActivityName.STEP_GUEST_CLOCKS)
    async def step_guest_clocks(self, data: ClockStepInput) -> ClockStepResult:
        """Set every node's clock to now, in parallel. Never raises for a node: a clock that could
        not be set is reported (the lab goes on with a lagging clock rather than not at all)."""
        runner = self.runner.with_retry(CLOCK_RETRY)
        result = ClockStepResult()

        async def one(node: BoundNode) -> None:
            try:
                target = await self._port.ssh_target(node.node_id)
                # The time is taken right before the command leaves, not when the activity started.
                outcome = await runner.run(target, commands.step_clock(time.time()), timeout_seconds=20,
                                           host_key=node.host_key, node=node.name)
            except (SshError, ClusterUnavailable, PermanentClusterError) as exc:
                result.failed[node.name] = f"not set: {exc}"
                return
            if outcome.ok:
                result.stepped.append(node.name)
            else:
                result.failed[node.name] = f"exit code {outcome.exit_code}: {excerpt(outcome.output, 300)}"

        async with heartbeating(lambda: len(result.stepped)):
            await asyncio.gather(*(one(node) for node in data.nodes))
        order = {n.name: i for i, n in enumerate(data.nodes)}
        result.stepped.sort(key=lambda name: order[name])
        return result


def _runs_on(script: Script, node: BoundNode) -> bool:
    if script.role == "all":
        return True
    if script.role == "workers":
        return node.role == Role.WORKER
    return node.role == Role.CONTROLPLANE


def _script_result(node: str, script: str, result: CommandResult) -> ScriptResult:
    return ScriptResult(node=node, script=script, exit_code=result.exit_code, output=result.output,
                        duration_seconds=result.duration_seconds, timed_out=result.timed_out)
