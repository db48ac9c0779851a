"""Reset on the time-skipping server: fresh nodes in the same session, setup re-run, the old nodes
torn down, the time left kept (or restarted), a limit per lab, and a failed reset that leaves the lab
running on its old nodes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.testing import WorkflowEnvironment

from labs.models import Role
from workflows.lab_session import LabSessionWorkflow
from workflows.models import (
    EndRequest,
    LabSessionResult,
    PauseRequest,
    Phase,
    ResetLimits,
    ResetRequest,
    ResumeRequest,
)

from ..conftest import start_time_skipping_env
from .fakes import MemoryCluster, ScriptStandIns, make_lab
from .helpers import WAIT, record_history, refused, session_worker, start_session

pytestmark = pytest.mark.timeout(60)


async def test_reset_gives_fresh_nodes_and_keeps_the_time_left(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    port.add_warm("warm-cp-1", "cp-1-31", Role.CONTROLPLANE)
    port.add_warm("warm-cp-2", "cp-1-31", Role.CONTROLPLANE)  # the reset takes this one: warm first
    lab = make_lab(workers=1, duration=timedelta(minutes=45))
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, lab)
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        assert ready.deadline is not None
        before = await handle.query(LabSessionWorkflow.status)
        old_ids = {n.node_id for n in before.nodes}
        await time_env.sleep(timedelta(minutes=10))

        done = await handle.execute_update(LabSessionWorkflow.reset, ResetRequest())
        new_ids = {n.node_id for n in done.nodes}
        assert new_ids.isdisjoint(old_ids) and "warm-cp-2" in new_ids
        assert set(port.nodes) == new_ids  # the old nodes are gone
        assert len(scripts.setups) == 2 and {n.node_id for n in scripts.setups[1].nodes} == new_ids
        assert scripts.setups[1].student_public_key == scripts.setups[0].student_public_key  # same key
        assert abs((done.deadline - ready.deadline).total_seconds()) < 5  # the time left is kept
        assert done.resets_left == 0
        status = await handle.query(LabSessionWorkflow.status)
        assert status.phase == Phase.RUNNING and status.resets_used == 1 and status.session_id != before.session_id
        again = await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        assert again.ready and again.endpoint == done.endpoint and again.private_key == ready.private_key

        result: LabSessionResult = await handle.result()
        await record_history(handle, "reset")

    assert (result.outcome, result.reason) == (Phase.EXPIRED, "expired")
    assert result.score == result.max_score == 3
    assert port.session_objects() == [] and port.nodes == {}


async def test_a_lab_file_may_restart_the_time_on_reset(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0, duration=timedelta(hours=1)),
                                     reset=ResetLimits(max_resets=2, restart_time=True))
        await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        await time_env.sleep(timedelta(minutes=40))
        done = await handle.execute_update(LabSessionWorkflow.reset, ResetRequest())
        status = await handle.query(LabSessionWorkflow.status)
        assert status.ready_at is not None
        assert done.deadline - status.ready_at >= timedelta(minutes=40, hours=1)  # a full hour from the reset
        assert done.resets_left == 1
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        await handle.result()
    assert port.session_objects() == []


async def test_reset_limits_and_states_refuse_clearly(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0))
        await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        await handle.execute_update(LabSessionWorkflow.pause, PauseRequest())
        assert "reset: the lab is not running (phase paused)" in await refused(
            handle, LabSessionWorkflow.reset, ResetRequest())
        await handle.execute_update(LabSessionWorkflow.resume, ResumeRequest())
        await handle.execute_update(LabSessionWorkflow.reset, ResetRequest())
        after = await handle.query(LabSessionWorkflow.status)
        assert "reset: no resets left (1 of 1 used)" in await refused(handle, LabSessionWorkflow.reset, ResetRequest())
        assert await handle.query(LabSessionWorkflow.status) == after
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        await handle.result()

    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0), reset=ResetLimits(max_resets=0))
        await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        assert "cannot be reset" in await refused(handle, LabSessionWorkflow.reset, ResetRequest())
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        await handle.result()
    assert port.session_objects() == []


async def test_a_reset_whose_nodes_fail_leaves_the_lab_running_on_the_old_ones(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=1))
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        before = await handle.query(LabSessionWorkflow.status)
        port.fail_reason = "ErrImagePull: registry.test/worker:1.31.0 not found"
        message = await refused(handle, LabSessionWorkflow.reset, ResetRequest())
        assert "reset failed, the lab goes on with its nodes" in message and "ErrImagePull" in message
        status = await handle.query(LabSessionWorkflow.status)
        assert status.phase == Phase.RUNNING and status.resets_used == 0
        assert status.nodes == before.nodes and status.session_id == before.session_id
        assert set(port.nodes) == {n.node_id for n in before.nodes}  # the failed new ones are gone
        again = await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        assert again.endpoint == ready.endpoint
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        result: LabSessionResult = await handle.result()
    assert result.outcome == Phase.ENDED
    assert port.session_objects() == []


async def test_ending_a_lab_during_its_reset_tears_both_generations_down() -> None:
    # Its own server: the wait for the new nodes is still polling when the lab ends, and the test server
    # keeps its clock still until that activity times out (it would stall the next time-skipping test).
    time_env = await start_time_skipping_env()
    try:
        await _end_during_reset(time_env)
    finally:
        await time_env.shutdown()


async def _end_during_reset(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=1))
        await handle.execute_update(LabSessionWorkflow.wait_ready, WAIT)
        port.never_ready = True  # the new nodes never come up
        update = await handle.start_update(LabSessionWorkflow.reset, ResetRequest(),
                                           wait_for_stage=WorkflowUpdateStage.ACCEPTED)
        assert (await handle.query(LabSessionWorkflow.status)).phase == Phase.RESETTING
        await handle.signal(LabSessionWorkflow.end, EndRequest(reason="ended by student"))
        result: LabSessionResult = await handle.result()
        with pytest.raises(WorkflowUpdateFailedError) as stopped:
            await update.result()
        assert "reset: the lab ended before its new nodes were ready" in str(stopped.value.cause)
    assert (result.outcome, result.reason) == (Phase.ENDED, "ended by student")
    assert port.session_objects() == [] and port.nodes == {}
