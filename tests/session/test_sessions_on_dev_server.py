"""Whole sessions on the dev server with the production worker, the simulated cluster and SSH activities."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from cluster.models import NodeState
from cluster.simulated.faults import BootFailure, FaultPlan, NodeDeath
from labrador.client import LabError, NoSession, SessionConflict
from workflows import search_attributes
from workflows.lab_session import LabSessionWorkflow
from workflows.models import TERMINAL_PHASES, LabSessionResult, Phase

from .conftest import Stack

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


def student() -> str:
    return f"st-{uuid.uuid4().hex[:8]}"


async def wait_for_phase(stack: Stack, who: str, phases: set[Phase]) -> Phase:
    async with asyncio.timeout(20):
        while True:
            status = await stack.labs.status(who)
            if status.phase in phases:
                return status.phase
            await asyncio.sleep(0.05)


async def test_a_session_runs_start_to_end_and_leaves_the_cluster_empty(stack: Stack) -> None:
    cluster = await stack.start_worker()
    who = student()
    started = await stack.labs.start(who, "networkpolicy-db")
    ready = await stack.labs.wait_ready(who, timedelta(seconds=15))
    assert ready.ready and ready.endpoint is not None and ready.private_key
    held = [n for n in (await cluster.inventory()).nodes if n.session and n.session.session_id == started.session_id]
    assert len(held) == 3
    assert {n.session.run_id for n in held if n.session} == {started.run_id}  # the exact run is recorded
    report = await stack.labs.check(who)
    assert report.max_score > 0
    await stack.labs.end(who)
    result: LabSessionResult = await stack.labs.result(who)
    assert (result.outcome, result.reason) == (Phase.ENDED, "ended by student")
    assert result.checks is not None and result.max_score == report.max_score
    assert set(result.phase_seconds) >= {"claiming", "provisioning", "wiring", "setting-up", "exposing", "running",
                                         "grading", "tearing-down"}
    assert (await cluster.inventory()).nodes == []
    with pytest.raises(NoSession, match="no lab running"):
        await stack.labs.end(who)
    after = await stack.labs.wait_ready(who, timedelta(seconds=1))
    assert (after.ready, after.phase) == (False, Phase.ENDED)
    with pytest.raises(LabError):
        await stack.labs.extend(who)
    again = await stack.labs.start(who, "scheduler-down")  # the student may start again
    assert again.session_id != started.session_id
    await stack.labs.end(who)
    await stack.labs.result(who)


async def test_two_concurrent_starts_for_one_student_run_exactly_one_lab(stack: Stack) -> None:
    await stack.start_worker()
    who = student()
    outcomes = await asyncio.gather(
        stack.labs.start(who, "kubelet-broken-worker"), stack.labs.start(who, "sandbox"), return_exceptions=True
    )
    conflicts = [o for o in outcomes if isinstance(o, SessionConflict)]
    assert len(conflicts) == 1, outcomes
    assert "already has lab" in str(conflicts[0]) and "running since" in str(conflicts[0])
    status = await stack.labs.status(who)
    started = next(o for o in outcomes if not isinstance(o, BaseException))
    assert status.lab_name == started.lab_name  # type: ignore[union-attr]
    await stack.labs.end(who)
    await stack.labs.result(who)


async def test_bad_inputs_are_refused_clearly_and_change_nothing(stack: Stack) -> None:
    cluster = await stack.start_worker()
    with pytest.raises(LabError, match="lab: 'no-such-lab' is not in the catalog"):
        await stack.labs.start(student(), "no-such-lab")
    for bad in ("bob\x00", "with space", "x" * 200, "", "../etc"):
        with pytest.raises(LabError, match="student"):
            await stack.labs.start(bad, "sandbox")
    with pytest.raises(NoSession):
        await stack.labs.end(student())
    with pytest.raises(NoSession):
        await stack.labs.status(student())
    with pytest.raises(LabError, match="phase: 'bogus'"):
        await stack.labs.list("bogus")
    assert (await cluster.inventory()).nodes == []


async def test_worker_killed_during_provisioning_a_new_worker_completes_the_session_without_duplicates(
    stack: Stack,
) -> None:
    stack.settings = stack.settings.model_copy(update={"sim_boot_seconds": 1.5})
    await stack.start_worker()
    who = student()
    started = await stack.labs.start(who, "taints-tolerations")
    await wait_for_phase(stack, who, {Phase.PROVISIONING})
    await asyncio.sleep(0.3)  # the nodes exist and the wait for them has begun
    await stack.kill_worker()
    cluster = await stack.start_worker()  # same SQLite file: the cluster survived, the worker did not
    ready = await stack.labs.wait_ready(who, timedelta(seconds=20))
    assert ready.ready, ready
    nodes = (await cluster.inventory()).nodes
    mine = [n for n in nodes if n.session and n.session.session_id == started.session_id]
    assert sorted(n.node_id for n in mine) == sorted({n.node_id for n in mine}) and len(mine) == 3
    assert all(n.state == NodeState.CLAIMED for n in mine)
    await stack.labs.end(who)
    await stack.labs.result(who)
    assert (await cluster.inventory()).nodes == []


async def test_with_faults_injected_every_session_ends_in_a_terminal_phase_and_the_cluster_is_empty(
    stack: Stack,
) -> None:
    plan = FaultPlan(
        seed=7,
        boot_failures=[BootFailure(rate=0.3)],
        node_deaths=[NodeDeath(after_seconds=0.5, rate=0.2)],
        api_error_rate=0.15,
    )
    cluster = await stack.start_worker(faults=plan)
    students = [student() for _ in range(6)]
    for who in students:
        await stack.labs.start(who, "kubelet-broken-worker")

    async def drive(who: str) -> LabSessionResult:
        ready = await stack.labs.wait_ready(who, timedelta(seconds=20))
        if ready.ready:
            await asyncio.sleep(3.5)  # long enough for a dying node to outlast the 2 s grace
            try:
                await stack.labs.end(who)
            except NoSession:
                pass
        return await stack.labs.result(who)

    results = await asyncio.gather(*(drive(who) for who in students))
    assert all(r.outcome in TERMINAL_PHASES for r in results), results
    assert any(r.outcome == Phase.FAILED for r in results)  # the plan did bite
    cluster.faults = FaultPlan()
    assert [n for n in (await cluster.inventory()).nodes if n.session is not None] == []


async def test_search_attributes_follow_the_phase_and_lab_list_filters_by_it(stack: Stack) -> None:
    await stack.start_worker()
    who = student()
    await stack.labs.start(who, "apiserver-manifest-typo")
    await wait_for_phase(stack, who, {Phase.READY})
    handle = stack.env.client.get_workflow_handle(f"lab-session/{who}")
    env = {**os.environ, "LABRADOR_TEMPORAL_ADDRESS": stack.settings.temporal_address,
           "LABRADOR_TASK_QUEUE": stack.settings.task_queue, "XDG_STATE_HOME": str(stack.settings.data_dir)}

    async def lab_list(phase: str) -> list[dict[str, str]]:
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "labrador", "lab", "list", "--phase", phase, "--json",
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        out, err = await cli.communicate()
        assert cli.returncode == 0, err
        return [s for s in json.loads(out) if s["student_id"] == who]

    async def listed_in(phase: str) -> list[dict[str, str]]:
        async with asyncio.timeout(15):  # visibility is eventually consistent
            while not (found := await lab_list(phase)):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        return found

    assert (await listed_in("ready"))[0]["lab_name"] == "apiserver-manifest-typo"
    details = await handle.describe()
    assert details.typed_search_attributes.get(search_attributes.STUDENT_ID) == who
    assert details.typed_search_attributes.get(search_attributes.LAB_NAME) == "apiserver-manifest-typo"
    await stack.labs.wait_ready(who, timedelta(seconds=5))  # credentials fetched: running
    await listed_in("running")
    assert await lab_list("ready") == []
    await stack.labs.end(who)
    await stack.labs.result(who)
    await listed_in("ended")
    assert (await handle.query(LabSessionWorkflow.status)).phase == Phase.ENDED
