"""Time rules of a lab session on the time-skipping server: expiry, extend, unclaimed, overdue."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment

from cluster.models import NodePhase
from labs.models import Role
from workflows.lab_session import LabSessionWorkflow
from workflows.models import (
    CheckRequest,
    EndRequest,
    ExtendRequest,
    LabSessionInput,
    LabSessionResult,
    Phase,
    SessionTimings,
    WaitReadyRequest,
)

from .fakes import NODE_CLASSES, MemoryCluster, ScriptStandIns, make_lab
from .helpers import SLOW_HEALTH, close_to, record_history, session_worker, start_session

pytestmark = pytest.mark.timeout(60)


async def test_lab_expires_at_its_duration_counted_from_ready_then_is_graded_and_torn_down(
    time_env: WorkflowEnvironment,
) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    port.add_warm("warm-cp-1", "cp-1-31", Role.CONTROLPLANE)  # one warm node, two cold ones
    lab = make_lab(duration=timedelta(minutes=45))
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, lab)
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.ready and ready.endpoint is not None and ready.private_key
        status = await handle.query(LabSessionWorkflow.status)
        assert status.phase == Phase.RUNNING
        assert status.deadline == status.ready_at + timedelta(minutes=45)  # type: ignore[operator]
        assert {n.name: n.warm for n in status.nodes} == {"controlplane": True, "node01": False, "node02": False}

        result: LabSessionResult = await handle.result()
        await record_history(handle, "expired")

    assert result.outcome == Phase.EXPIRED and result.reason == "expired"
    assert close_to(result.phase_seconds["running"], timedelta(minutes=45))
    assert result.score == 3 and result.max_score == 3  # final grading ran
    assert scripts.teardowns == 1
    assert port.session_objects() == []
    assert set(port.nodes) == set()  # the warm node was claimed, so it is deleted with the session


async def test_extend_moves_the_deadline_only_in_the_last_part_and_is_refused_past_the_limit(
    time_env: WorkflowEnvironment,
) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    lab = make_lab(workers=1, duration=timedelta(hours=1), max_extensions=2, extension=timedelta(minutes=15))
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, lab)
        with pytest.raises(WorkflowUpdateFailedError) as early:
            # refused before the student has the lab; nothing changes
            await handle.execute_update(LabSessionWorkflow.extend, ExtendRequest())
        assert "not running" in str(early.value.cause)
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.deadline is not None
        with pytest.raises(WorkflowUpdateFailedError) as too_early:
            await handle.execute_update(LabSessionWorkflow.extend, ExtendRequest())
        assert "allowed only in the lab's last 15m (1h left" in str(too_early.value.cause)
        await time_env.sleep(timedelta(minutes=50))
        first = await handle.execute_update(LabSessionWorkflow.extend, ExtendRequest())
        assert first.deadline == ready.deadline + timedelta(minutes=15)
        assert (first.extensions_used, first.extensions_left) == (1, 1)
        with pytest.raises(WorkflowUpdateFailedError) as again_too_early:
            await handle.execute_update(LabSessionWorkflow.extend, ExtendRequest())  # 25 minutes left
        assert "allowed only in the lab's last 15m" in str(again_too_early.value.cause)
        await time_env.sleep(timedelta(minutes=15))
        second = await handle.execute_update(LabSessionWorkflow.extend, ExtendRequest())
        assert second.deadline == ready.deadline + timedelta(minutes=30)
        await time_env.sleep(timedelta(minutes=15))
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(LabSessionWorkflow.extend, ExtendRequest())
        assert "no extensions left (2 of 2 used)" in str(refused.value.cause)
        assert (await handle.query(LabSessionWorkflow.status)).deadline == second.deadline

        result: LabSessionResult = await handle.result()
        await record_history(handle, "extended-in-last-part")

    assert result.outcome == Phase.EXPIRED
    assert close_to(result.phase_seconds["running"], timedelta(hours=1, minutes=30))
    assert port.session_objects() == []


async def test_extensions_stay_within_max_lab_duration(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    lab = make_lab(workers=0, duration=timedelta(hours=1), max_extensions=3, extension=timedelta(minutes=15))
    timings = SessionTimings(health_interval=SLOW_HEALTH, max_lab_duration=timedelta(minutes=80))
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, lab, timings=timings)
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.deadline is not None
        await time_env.sleep(timedelta(minutes=50))
        first = await handle.execute_update(LabSessionWorkflow.extend, ExtendRequest())  # 1h15m in all
        assert first.deadline == ready.deadline + timedelta(minutes=15)
        await time_env.sleep(timedelta(minutes=15))
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(LabSessionWorkflow.extend, ExtendRequest())  # would be 1h30m
        assert "would last 1h30m in all, more than max_lab_duration 1h20m" in str(refused.value.cause)
        assert (await handle.query(LabSessionWorkflow.status)).extensions_used == 1
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        result: LabSessionResult = await handle.result()

    assert result.outcome == Phase.ENDED
    assert port.session_objects() == []


async def test_ten_checks_within_a_second_run_one_check(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    scripts.check_seconds = 0.3  # long enough for the others to arrive while it runs
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0))
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.ready

        async def check() -> Any:
            try:
                return await handle.execute_update(LabSessionWorkflow.check, CheckRequest())
            except WorkflowUpdateFailedError as refused:
                return str(refused.cause)

        answers = await asyncio.gather(*(check() for _ in range(10)))
        assert scripts.check_runs == 1
        reports = [a for a in answers if not isinstance(a, str)]
        refusals = [a for a in answers if isinstance(a, str)]
        assert reports and all(r == reports[0] for r in reports)  # the concurrent ones joined the running check
        assert all("at most one check every 10s" in r and "try again in" in r for r in refusals)
        await asyncio.sleep(0.5)
        with pytest.raises(WorkflowUpdateFailedError) as too_soon:  # the check is over, the interval is not
            await handle.execute_update(LabSessionWorkflow.check, CheckRequest())
        assert "at most one check every 10s" in str(too_soon.value.cause)
        await time_env.sleep(timedelta(seconds=11))
        await handle.execute_update(LabSessionWorkflow.check, CheckRequest())
        assert scripts.check_runs == 2
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        result: LabSessionResult = await handle.result()
        await record_history(handle, "checks-joined")

    assert result.outcome == Phase.ENDED and scripts.check_runs == 3  # and the final grading


async def test_cluster_api_errors_retry_as_regular_activities(time_env: WorkflowEnvironment) -> None:
    """A cluster API that stays down is retried by regular activities (no local activity holding the
    workflow task open), during preparation and during teardown alike."""
    port, scripts = MemoryCluster(), ScriptStandIns()
    # more than the quick local attempts (4) x the tries at once inside prepare_nodes (3)
    port.unavailable_method, port.unavailable_calls = "provision", 14
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0))
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.ready
        port.unavailable_method, port.unavailable_calls = "release", 3  # the release fails three times
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        result: LabSessionResult = await handle.result()
        history = await handle.fetch_history()
        await record_history(handle, "cluster-api-retry")

    assert result.outcome == Phase.ENDED and result.teardown_problems == []
    assert port.session_objects() == [] and port.nodes == {}
    assert not any(e.HasField("workflow_task_failed_event_attributes") for e in history.events)
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
                 if e.HasField("activity_task_scheduled_event_attributes")]
    assert "prepare_nodes" in scheduled  # the fallback after the quick local attempts (provision inside)
    assert {"unexpose_ssh", "unwire_session", "release_session"} <= set(scheduled)


async def test_unclaimed_lab_ends_after_the_timeout_without_grading(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    timings = SessionTimings(unclaimed_timeout=timedelta(minutes=7), health_interval=SLOW_HEALTH)
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0), timings=timings)
        result: LabSessionResult = await handle.result()
        await record_history(handle, "unclaimed")

    assert (result.outcome, result.reason) == (Phase.ENDED, "unclaimed")
    assert close_to(result.phase_seconds["ready"], timedelta(minutes=7))
    assert "running" not in result.phase_seconds
    assert scripts.check_runs == 0
    assert port.session_objects() == []


async def test_overdue_provisioning_fails_the_session_and_cleans_up(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    port.never_ready = True
    # A running activity (the heartbeating wait) holds the test server's clock, so the limit is short
    # and real rather than skipped.
    timings = SessionTimings(provisioning_overdue=timedelta(seconds=2), health_interval=SLOW_HEALTH)
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(), timings=timings)
        result: LabSessionResult = await handle.result()
        await record_history(handle, "overdue")
        status = await handle.query(LabSessionWorkflow.status)

    assert (result.outcome, result.reason) == (Phase.FAILED, "overdue")
    assert "2s" in result.detail and "provisioning" in result.detail
    assert status.phase == Phase.FAILED and status.reason == "overdue"
    assert port.session_objects() == [] and port.nodes == {}
    assert scripts.setups == []  # never reached setup


async def test_failed_node_fails_the_session_naming_node_and_cause(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    port.fail_reason = "ErrImagePull: registry.test/worker:1.31.0 not found"
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        # One node: with two, both waits fail at once and the cancel request for the second one races its
        # failure, which the Java test server refuses (ACTIVITY_UNKNOWN) and then stalls the workflow task
        # (the dev server fails that task and the retry goes on: see "Noticed, not fixed").
        handle = await start_session(time_env.client, tq, make_lab(workers=0))
        result: LabSessionResult = await handle.result()
        await record_history(handle, "node-failed")

    assert result.outcome == Phase.FAILED
    assert "node controlplane" in result.reason
    assert "ErrImagePull" in result.reason
    assert port.session_objects() == []


async def test_check_runs_now_and_is_refused_before_ready(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    port.never_ready = True
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0))
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(LabSessionWorkflow.check, CheckRequest())
        assert "not ready" in str(refused.value.cause)
        assert scripts.check_runs == 0
        for node_id in list(port.statuses):
            port.statuses[node_id] = NodePhase.READY
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.ready
        report = await handle.execute_update(LabSessionWorkflow.check, CheckRequest())
        assert (report.score, report.max_score) == (3, 3)
        assert (await handle.query(LabSessionWorkflow.status)).last_check == report
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        result: LabSessionResult = await handle.result()
        await record_history(handle, "checked-and-ended")
    assert result.outcome == Phase.ENDED and result.reason == "ended by student"
    assert scripts.check_runs == 2  # the student's check and the final grading


async def test_a_node_that_stays_down_past_the_grace_fails_the_session(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    timings = SessionTimings(health_interval=timedelta(minutes=1), health_grace=timedelta(minutes=3))
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=1), timings=timings)
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.ready
        node01 = next(n.node_id for n in (await handle.query(LabSessionWorkflow.status)).nodes if n.name == "node01")
        port.not_ready_calls[node01] = 1000
        result: LabSessionResult = await handle.result()
        await record_history(handle, "node-down")

    assert result.outcome == Phase.FAILED
    assert result.reason.startswith("node node01 is not-ready") and "not recovered" in result.reason
    assert 3 * 60 <= result.phase_seconds["running"] <= 5 * 60  # noticed within an interval, failed after the grace
    assert port.session_objects() == []


async def test_an_unanswered_health_look_does_not_stop_the_health_watch(time_env: WorkflowEnvironment) -> None:
    """A health look the cluster API does not answer is no evidence against the node, and the watch goes
    on: a node that goes down afterwards still fails the lab. (A local activity's failure arrives as a
    bare ApplicationError; it used to end the watch silently.)"""
    port, scripts = MemoryCluster(), ScriptStandIns()
    timings = SessionTimings(health_interval=timedelta(minutes=1), health_grace=timedelta(minutes=3))
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0), timings=timings)
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.ready
        controlplane = (await handle.query(LabSessionWorkflow.status)).nodes[0].node_id
        port.unavailable_method, port.unavailable_calls = "node_status", 3  # one look's every attempt fails
        await time_env.sleep(timedelta(minutes=2))
        assert (await handle.query(LabSessionWorkflow.status)).phase == Phase.RUNNING
        port.not_ready_calls[controlplane] = 1000
        result: LabSessionResult = await handle.result()
        await record_history(handle, "health-look-unanswered")

    assert result.outcome == Phase.FAILED
    assert result.reason.startswith("node controlplane is not-ready") and "not recovered" in result.reason
    assert port.session_objects() == []


async def test_a_node_that_recovers_within_the_grace_does_not_end_the_lab(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    timings = SessionTimings(health_interval=timedelta(minutes=1), health_grace=timedelta(minutes=3))
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=1, duration=timedelta(minutes=20)),
                                     timings=timings)
        await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        node01 = next(n.node_id for n in (await handle.query(LabSessionWorkflow.status)).nodes if n.name == "node01")
        port.not_ready_calls[node01] = 2  # down for two checks (2 min), then back
        result: LabSessionResult = await handle.result()

    assert (result.outcome, result.reason) == (Phase.EXPIRED, "expired")


async def test_cancelling_a_session_still_tears_it_down(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=1))
        await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert port.session_objects() != []
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        assert isinstance(failure.value.cause, CancelledError)
        status = await handle.query(LabSessionWorkflow.status)

    assert (status.phase, status.reason) == (Phase.ENDED, "cancelled")
    assert port.session_objects() == []


async def test_a_bug_fails_the_session_after_tearing_it_down(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    port.add_warm("warm-cp-1", "cp-1-31", Role.CONTROLPLANE)
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        # The input lacks the worker class: the workflow's lookup raises (a bug, not a retryable task failure).
        handle = await time_env.client.start_workflow(
            LabSessionWorkflow.run,
            LabSessionInput(student_id="buggy", lab=make_lab(workers=1),
                            node_classes={"cp-1-31": NODE_CLASSES["cp-1-31"]},
                            timings=SessionTimings(health_interval=SLOW_HEALTH)),
            id=f"lab-session/buggy-{tq}", task_queue=tq,
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        status = await handle.query(LabSessionWorkflow.status)

    assert "KeyError" in str(failure.value.cause) or "worker-1-31" in str(failure.value.cause)
    assert status.phase == Phase.FAILED and status.reason is not None and status.reason.startswith("internal error")
    assert port.session_objects() == [] and port.nodes == {}  # the claimed warm node went with the session


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
async def test_a_session_evicted_after_every_task_behaves_the_same(
    time_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No workflow cache: every task replays the history and the previous instance is evicted (the SDK
    cancels its tasks and refuses its commands). The evicted instances must not even enter the teardown
    step (it belongs to the run, not to the instance): the step itself is counted, not only the
    activities it schedules (the SDK would refuse those anyway)."""
    entries: list[str] = []
    teardown = LabSessionWorkflow._teardown

    async def counted_teardown(self: LabSessionWorkflow) -> None:
        # The SDK's own flag for "this instance is being evicted" (private; read only by this test).
        runtime: Any = workflow._Runtime.current()
        if runtime._deleting:
            entries.append("evicted")
        elif not workflow.unsafe.is_replaying():
            entries.append("live")  # replays of the recorded teardown are not new entries
        await teardown(self)

    monkeypatch.setattr(LabSessionWorkflow, "_teardown", counted_teardown)
    port, scripts = MemoryCluster(), ScriptStandIns()
    async with session_worker(time_env.client, port, scripts.all(), max_cached_workflows=0) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=1, duration=timedelta(minutes=30)))
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.ready
        await time_env.sleep(timedelta(minutes=20))  # extend is allowed in the lab's last 15 minutes
        await handle.execute_update(LabSessionWorkflow.extend, ExtendRequest())
        result: LabSessionResult = await handle.result()

    assert (result.outcome, result.reason) == (Phase.EXPIRED, "expired")
    assert close_to(result.phase_seconds["running"], timedelta(minutes=45))
    assert entries == ["live"]  # exactly one entry into the teardown step for the session
    assert scripts.teardowns == 1 and port.session_objects() == []
