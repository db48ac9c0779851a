"""The lean start (LEAN_START_PATCH), the quiet flow (QUIET_FLOW) and the claim that prepares
(CLAIM_PREPARES_FLOW, what the client starts today): what a start costs the engine, in history, stays small.

Every local activity is a round trip through the worker and a marker; every patch marker also upserts
TemporalChangeVersion, and every upsert is a Visibility write on the server. A start that ran one call
per node and step, one upsert per phase and four patch markers started ~2x slower on the 2-core bench
machine; two upserts more of the same kind cost ~15 % of a bare workflow's start rate there
(bench/session_overhead.py --hold, docs/session.md#what-a-start-costs).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from labs.models import Role
from workflows.lab_session import LabSessionWorkflow
from workflows.models import EndRequest, LabSessionResult, Phase, SessionTimings, WaitReadyRequest
from workflows.pool_models import CapacityLimits
from workflows.session.patches import LEAN_START_PATCH, QUIET_FLOW

from .fakes import MemoryCluster, ScriptStandIns, make_lab
from .helpers import SLOW_HEALTH, record_history, session_worker, start_session


def _until_ended(events: list[Any]) -> list[Any]:
    """The start: everything before the student's `end` signal."""
    end = next(i for i, e in enumerate(events) if e.HasField("workflow_execution_signaled_event_attributes"))
    return events[:end]


def _upserted(events: list[Any], key: str) -> list[Any]:
    values = []
    for event in events:
        if event.HasField("upsert_workflow_search_attributes_event_attributes"):
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            if key in fields:
                values.append(json.loads(fields[key].data))
    return values


async def test_a_lean_cold_start_makes_one_cluster_call_for_its_nodes_and_one_phase_upsert_per_task(
    time_env: WorkflowEnvironment,
) -> None:
    """A run started before flows (flow 0, by an older client): the lean start by its patch marker."""
    port = MemoryCluster()
    scripts = ScriptStandIns(port)  # its setup exposes SSH at the end, like the real one
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=2), flow=0)
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.ready
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        result: LabSessionResult = await handle.result()
        events = list((await handle.fetch_history()).events)

    assert result.outcome == Phase.ENDED
    assert len(port.provision_calls) == 3 and port.wired == set()  # provisioned, wired, unwired at the end
    start = _until_ended(events)
    markers = [e.marker_recorded_event_attributes.marker_name for e in start
               if e.HasField("marker_recorded_event_attributes")]
    # claim and prepare_nodes (3 provisions + 3 looks + wire + the key pair): 2 calls, not 10; SSH
    # exposed by the setup activity at its end
    assert markers.count("core_local_activity") == 2
    assert scripts.setups[0].expose is not None and ready.endpoint is not None
    assert markers.count("core_patch") == 1  # only the lean start's own marker ...
    assert _upserted(start, "TemporalChangeVersion") == [[LEAN_START_PATCH]]  # ... and its one upsert
    tasks = sum(1 for e in start if e.HasField("workflow_task_completed_event_attributes"))
    phases = _upserted(start, "LabPhase")
    # claiming, provisioning, wiring, setting-up, exposing, ready, running passed; Visibility was told
    # at most once per workflow task, not once per phase, and last that the lab runs
    assert len(phases) <= tasks < 7
    assert phases[-1] == Phase.RUNNING.value
    assert set(result.phase_seconds) >= {"claiming", "provisioning", "wiring", "setting-up", "exposing"}


async def _start_and_end(
    time_env: WorkflowEnvironment, scripts: ScriptStandIns, port: MemoryCluster, **options: Any
) -> tuple[LabSessionResult, list[Any]]:
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=2), **options)
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.ready
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        result: LabSessionResult = await handle.result()
        return result, _until_ended(list((await handle.fetch_history()).events))


# The quiet flow's timer runs in real time here: the dev server (the time-skipping one skips time while
# the client waits for `wait_ready`, setup running or not).


async def test_a_quiet_start_records_no_marker_and_shows_visibility_only_that_the_lab_runs(
    dev_env: WorkflowEnvironment,
) -> None:
    port = MemoryCluster()
    result, start = await _start_and_end(dev_env, ScriptStandIns(port), port)  # the client's flow
    assert result.outcome == Phase.ENDED
    markers = [e.marker_recorded_event_attributes.marker_name for e in start
               if e.HasField("marker_recorded_event_attributes")]
    assert markers == ["core_local_activity", "core_local_activity"]  # claim, prepare_nodes: no patch marker
    assert _upserted(start, "TemporalChangeVersion") == []
    # claiming ... exposing passed in less than phase_shown_after: Visibility was told once, that it runs
    assert _upserted(start, "LabPhase") == [Phase.RUNNING.value]
    assert set(result.phase_seconds) >= {"claiming", "provisioning", "wiring", "setting-up", "exposing"}


async def test_a_phase_that_lasts_reaches_visibility_while_it_lasts(dev_env: WorkflowEnvironment) -> None:
    port = MemoryCluster()
    scripts = ScriptStandIns(port)
    scripts.setup_seconds = 2.0
    timings = SessionTimings(health_interval=SLOW_HEALTH, phase_shown_after=timedelta(milliseconds=500))
    result, start = await _start_and_end(dev_env, scripts, port, timings=timings)
    assert result.outcome == Phase.ENDED
    # setup lasted past phase_shown_after: `lab list --phase setting-up` found the lab meanwhile
    assert _upserted(start, "LabPhase") == [Phase.SETTING_UP.value, Phase.RUNNING.value]


async def test_a_node_still_booting_is_waited_for_then_the_session_is_wired(time_env: WorkflowEnvironment) -> None:
    port, scripts = MemoryCluster(), ScriptStandIns()
    port.add_warm("warm-cp", "cp-1-31", Role.CONTROLPLANE)
    port.not_ready_calls["warm-cp"] = 2  # the look inside prepare_nodes and the wait's first look
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0))
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=60)))
        assert ready.ready
        wired_while_running = set(port.wired)
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        result: LabSessionResult = await handle.result()
        events = list((await handle.fetch_history()).events)

    assert result.outcome == Phase.ENDED
    assert port.provision_calls == []  # the warm node was claimed
    assert len(wired_while_running) == 1  # wired by its own call once the node was ready
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in events
                 if e.HasField("activity_task_scheduled_event_attributes")]
    assert "wait_node_ready" in scheduled


def _local_activity_markers(events: list[Any]) -> int:
    return sum(1 for e in events if e.HasField("marker_recorded_event_attributes")
               and e.marker_recorded_event_attributes.marker_name == "core_local_activity")


@pytest.mark.parametrize("capped", [False, True], ids=["no cap", "under the capacity cap"])
async def test_a_warm_start_claims_and_prepares_its_nodes_in_one_local_activity(
    time_env: WorkflowEnvironment, capped: bool
) -> None:
    port = MemoryCluster()
    port.add_warm("warm-cp", "cp-1-31", Role.CONTROLPLANE)
    port.add_warm("warm-w1", "worker-1-31", Role.WORKER)
    port.add_warm("warm-w2", "worker-1-31", Role.WORKER)
    scripts = ScriptStandIns(port)
    cap: dict[str, Any] = {"capacity": CapacityLimits(max_vms=10, max_memory_bytes=2**40)} if capped else {}
    async with session_worker(time_env.client, port, scripts.all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=2), **cap)  # the client's flow
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.ready and ready.private_key
        session_id = (await handle.query(LabSessionWorkflow.status)).session_id
        wired_while_running = set(port.wired)
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        result: LabSessionResult = await handle.result()
        start = _until_ended(list((await handle.fetch_history()).events))
        await record_history(handle, f"warm-start-{'capped' if capped else 'no-cap'}")

    assert result.outcome == Phase.ENDED
    assert port.provision_calls == [] and wired_while_running == {session_id}
    assert _local_activity_markers(start) == 1  # claim + prepare_nodes in one call: one round trip less
    assert sorted(n.node_id for n in scripts.setups[0].nodes) == ["warm-cp", "warm-w1", "warm-w2"]


async def test_a_run_of_the_quiet_flow_still_claims_and_prepares_apart(time_env: WorkflowEnvironment) -> None:
    """Runs started before CLAIM_PREPARES_FLOW keep their command sequence (their input says flow 1)."""
    port = MemoryCluster()
    port.add_warm("warm-cp", "cp-1-31", Role.CONTROLPLANE)
    async with session_worker(time_env.client, port, ScriptStandIns(port).all()) as tq:
        handle = await start_session(time_env.client, tq, make_lab(workers=0), flow=QUIET_FLOW)
        ready = await handle.execute_update(LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=timedelta(seconds=30)))
        assert ready.ready
        await handle.signal(LabSessionWorkflow.end, EndRequest())
        await handle.result()
        start = _until_ended(list((await handle.fetch_history()).events))
    assert _local_activity_markers(start) == 2  # claim_nodes, then prepare_nodes
