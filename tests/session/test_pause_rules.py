"""Pause and resume on the time-skipping server: the deadline moves by the paused time, a pause past
its limit ends the lab (`pause expired`), the limits refuse clearly and change nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from workflows.lab_session import LabSessionWorkflow
from workflows.models import (
    EndRequest,
    LabSessionResult,
    PauseLimits,
    PauseRequest,
    Phase,
    ResumeRequest,
    WaitReadyRequest,
)

from .fakes import MemoryCluster, ScriptStandIns, make_lab
from .helpers import WAIT, close_to, record_history, refused, session_worker, start_session

pytestmark = pytest.mark.timeout(60)


async def test_a_paused_lab_gets_its_paused_time_back(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    lab = make_lab(workers=1, duration=timedelta(minutes=45))
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, lab)
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        assert ready.ready and ready.deadline is not None
        node_ids = {n.node_id for n in (await handle.query(LabSessionWorkflow.status)).nodes}

        paused = await handle.execute_update(LabSessionWorkflow.pause, PauseRequest())
        assert paused.expires_at == paused.paused_at + timedelta(minutes=30)
        assert (paused.pauses_left, paused.pause_time_left) == (2, timedelta(hours=2))
        status = await handle.query(LabSessionWorkflow.status)
        assert status.phase == Phase.PAUSED and status.paused_at == paused.paused_at
        assert port.paused == node_ids and port.exposed == {}  # VMs frozen, SSH closed
        not_yet = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(0)))
        assert (not_yet.ready, not_yet.phase) == (False, Phase.PAUSED)

        await time_env.sleep(timedelta(minutes=20))  # lunch; well past the lab's own deadline otherwise
        resumed = await handle.execute_update(LabSessionWorkflow.resume, ResumeRequest())
        assert close_to(resumed.paused_seconds, timedelta(minutes=20))
        assert resumed.deadline == ready.deadline + timedelta(seconds=resumed.paused_seconds)
        assert port.paused == set() and set(port.exposed) == {status.session_id}
        assert scripts.clock_steps == [["controlplane", "node01"]]  # the guests' clocks, before SSH opened
        again = await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        assert again.ready and again.endpoint == resumed.endpoint and again.deadline == resumed.deadline
        status = await handle.query(LabSessionWorkflow.status)
        assert status.phase == Phase.RUNNING and status.pauses_used == 1 and status.paused_at is None

        result: LabSessionResult = await handle.result()
        await record_history(handle, "paused-resumed-health-waits")

    assert (result.outcome, result.reason) == (Phase.EXPIRED, "expired")
    assert close_to(result.phase_seconds["running"], timedelta(minutes=45))
    assert close_to(result.phase_seconds["paused"], timedelta(minutes=20))
    assert result.score == result.max_score == 3
    assert port.session_objects() == []


async def test_a_pause_past_its_limit_ends_the_lab_ungraded(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=1),
                                     pause=PauseLimits(longest=timedelta(minutes=20)))
        await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        await handle.execute_update(LabSessionWorkflow.pause, PauseRequest())
        result: LabSessionResult = await handle.result()
        await record_history(handle, "pause-expired-health-waits")

    assert (result.outcome, result.reason) == (Phase.EXPIRED, "pause expired")
    assert "stayed paused past" in result.detail
    assert close_to(result.phase_seconds["paused"], timedelta(minutes=20))
    assert scripts.check_runs == 0 and result.score == 0  # the default: not graded
    assert port.session_objects() == []


async def test_a_lab_file_may_grade_a_pause_that_expired(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=1),
                                     pause=PauseLimits(longest=timedelta(minutes=5), grade_when_expired=True))
        await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        await handle.execute_update(LabSessionWorkflow.pause, PauseRequest())
        result: LabSessionResult = await handle.result()

    assert (result.outcome, result.reason) == (Phase.EXPIRED, "pause expired")
    assert result.score == result.max_score == 3
    assert port.pause_calls[-1].startswith("unpause")  # graded on running nodes
    assert port.session_objects() == []


async def test_pause_limits_refuse_clearly_and_change_nothing(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    limits = PauseLimits(longest=timedelta(minutes=30), total=timedelta(minutes=40), max_pauses=2)
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0, duration=timedelta(hours=2)),
                                     pause=limits)
        assert "resume: the lab is not paused" in await refused(handle, LabSessionWorkflow.resume, ResumeRequest())
        await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        before = await handle.query(LabSessionWorkflow.status)
        assert "resume: the lab is not paused (phase running)" in await refused(
            handle, LabSessionWorkflow.resume, ResumeRequest())

        await handle.execute_update(LabSessionWorkflow.pause, PauseRequest())
        assert "pause: the lab is not running (phase paused)" in await refused(
            handle, LabSessionWorkflow.pause, PauseRequest())
        await time_env.sleep(timedelta(minutes=25))
        await handle.execute_update(LabSessionWorkflow.resume, ResumeRequest())
        # 15 minutes of pause time are left: this pause ends the lab after 15, not 30 minutes
        second = await handle.execute_update(LabSessionWorkflow.pause, PauseRequest())
        assert second.pauses_left == 0 and close_to(second.pause_time_left.total_seconds(), timedelta(minutes=15))
        assert second.expires_at - second.paused_at == second.pause_time_left
        await handle.execute_update(LabSessionWorkflow.resume, ResumeRequest())
        after = await handle.query(LabSessionWorkflow.status)
        assert "pause: no pauses left (2 of 2 used)" in await refused(handle, LabSessionWorkflow.pause, PauseRequest())
        assert await handle.query(LabSessionWorkflow.status) == after  # a refusal writes nothing
        assert after.pauses_used == 2 and after.phase == Phase.RUNNING
        assert after.deadline is not None and before.deadline is not None
        assert close_to((after.deadline - before.deadline).total_seconds(), timedelta(minutes=25))
        await handle.signal(LabSessionWorkflow.end, EndRequest(reason="done"))
        result: LabSessionResult = await handle.result()

    assert (result.outcome, result.reason) == (Phase.ENDED, "done")


async def test_a_lab_that_cannot_pause_says_so(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0), pause=PauseLimits(max_pauses=0))
        await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        assert "cannot be paused" in await refused(handle, LabSessionWorkflow.pause, PauseRequest())
        assert port.pause_calls == []
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        await handle.result()


async def test_ending_a_paused_lab_wakes_its_nodes_for_grading(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=1))
        await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        await handle.execute_update(LabSessionWorkflow.pause, PauseRequest())
        await handle.signal(LabSessionWorkflow.end, EndRequest(reason="ended by student"))
        result: LabSessionResult = await handle.result()

    assert (result.outcome, result.reason) == (Phase.ENDED, "ended by student")
    assert result.score == 3 and len(scripts.clock_steps) == 1
    assert sorted(c.split()[0] for c in port.pause_calls) == ["pause"] * 2 + ["unpause"] * 2
    assert port.session_objects() == []


async def test_a_node_that_does_not_come_back_from_a_pause_fails_the_lab(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    port.fail_reason = None
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0))
        await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        await handle.execute_update(LabSessionWorkflow.pause, PauseRequest())
        port.fail_unpause = True
        assert "resume failed, the lab ends" in await refused(handle, LabSessionWorkflow.resume, ResumeRequest())
        result: LabSessionResult = await handle.result()

    assert (result.outcome, result.reason) == (Phase.FAILED, "resume failed")
    assert port.session_objects() == []
