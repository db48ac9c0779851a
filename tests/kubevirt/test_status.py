"""VM/VMI status parsing and the PVC-clone follower's decisions, case by case."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cluster.kubevirt import labels as L
from cluster.kubevirt.status import CloneAction, ClonePolicy, CloneTracking, decide_clone, parse_node_status
from cluster.models import NodePhase

NS = {"metadata": {"name": "lab-n1", "labels": {L.STATE: "provisioning"}}}
NS_FREE = {"metadata": {"name": "lab-n1", "labels": {L.STATE: "free"}}}


def vm(printable: str | None = None, message: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if printable:
        status["printableStatus"] = printable
    if message:
        status["conditions"] = [{"type": "Ready", "status": "False", "message": message}]
    return {"metadata": {"name": "n1", "namespace": "lab-n1"}, "status": status}


def vmi(phase: str, ready: str = "False", ip: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}
    if ip:
        status["interfaces"] = [{"name": "default", "ipAddress": ip}]
    return {"status": status}


def test_ready_needs_running_ready_condition_and_address() -> None:
    status = parse_node_status("n1", NS, vm("Running"), vmi("Running", "True", "10.1.2.3"))
    assert status.phase == NodePhase.READY and status.address == "10.1.2.3"


@pytest.mark.parametrize(
    "instance",
    [vmi("Running", "True"), vmi("Running", "False", "10.1.2.3"), vmi("Scheduled", "True", "10.1.2.3"), None],
)
def test_not_ready_yet_is_provisioning(instance: dict[str, Any] | None) -> None:
    status = parse_node_status("n1", NS, vm("Starting"), instance)
    assert status.phase == NodePhase.PROVISIONING and status.address is None


def test_a_node_that_was_ready_and_stopped_being_ready_is_not_ready() -> None:
    assert parse_node_status("n1", NS_FREE, vm("Running"), vmi("Running", "False", "10.1.2.3")).phase == (
        NodePhase.NOT_READY
    )


@pytest.mark.parametrize("printable", ["ErrImagePull", "ImagePullBackOff", "CrashLoopBackOff", "ErrorUnschedulable"])
def test_terminal_vm_states_fail_with_the_cause(printable: str) -> None:
    status = parse_node_status("n1", NS, vm(printable, "0/3 nodes are available"), None)
    assert status.phase == NodePhase.FAILED
    assert printable in (status.reason or "") and "lab-n1/n1" in (status.reason or "")
    assert "0/3 nodes are available" in (status.reason or "")


def test_failed_vmi_fails() -> None:
    status = parse_node_status("n1", NS, vm("Running"), vmi("Failed"))
    assert status.phase == NodePhase.FAILED and "Failed" in (status.reason or "")


def test_missing_namespace_or_vm() -> None:
    assert parse_node_status("n1", None, None, None).phase == NodePhase.MISSING
    terminating = {"metadata": {"name": "lab-n1", "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert parse_node_status("n1", terminating, vm(), None).phase == NodePhase.MISSING
    assert parse_node_status("n1", NS, None, None).phase == NodePhase.PROVISIONING


# --- clone follower ------------------------------------------------------------------------------
T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = ClonePolicy(stall_timeout=timedelta(seconds=60), restart_limit=2, max_attempts=3,
                     backoff=timedelta(seconds=10))


def dv(phase: str, progress: str = "10.0%", restarts: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": "n1-rootdisk"}, "status": {"phase": phase, "progress": progress,
                                                             "restartCount": restarts}}


def test_progress_is_tracked_then_a_stall_restarts() -> None:
    first = decide_clone(dv("CloneInProgress", "10.0%"), CloneTracking(), T0, POLICY)
    assert first.action == CloneAction.TRACK and first.tracking.progress == "10.0%"
    quiet = decide_clone(dv("CloneInProgress", "10.0%"), first.tracking, T0 + timedelta(seconds=59), POLICY)
    assert quiet.action == CloneAction.WAIT
    stalled = decide_clone(dv("CloneInProgress", "10.0%"), first.tracking, T0 + timedelta(seconds=61), POLICY)
    assert stalled.action == CloneAction.RESTART and "no clone progress" in stalled.reason
    assert stalled.tracking.retry_at == T0 + timedelta(seconds=71)


def test_moving_progress_is_not_a_stall() -> None:
    tracking = CloneTracking(progress="10.0%", progress_at=T0)
    moved = decide_clone(dv("CloneInProgress", "30.0%"), tracking, T0 + timedelta(seconds=500), POLICY)
    assert moved.action == CloneAction.TRACK and moved.tracking.progress_at == T0 + timedelta(seconds=500)


def test_failed_phase_and_restart_storm_restart() -> None:
    tracking = CloneTracking(progress="10.0%", progress_at=T0)
    assert decide_clone(dv("Failed"), tracking, T0, POLICY).action == CloneAction.RESTART
    storm = decide_clone(dv("CloneInProgress", restarts=3), tracking, T0, POLICY)
    assert storm.action == CloneAction.RESTART and "restarted 3 times" in storm.reason


def test_backoff_then_recreate_counts_attempts() -> None:
    waiting = CloneTracking(attempt=1, retry_at=T0 + timedelta(seconds=10), last_error="Failed")
    assert decide_clone(None, waiting, T0, POLICY).action == CloneAction.WAIT
    again = decide_clone(None, waiting, T0 + timedelta(seconds=10), POLICY)
    assert again.action == CloneAction.CREATE and again.tracking.attempt == 2 and again.tracking.retry_at is None
    # The second retry waits twice as long.
    assert POLICY.backoff_for(2) == timedelta(seconds=20)


def test_gives_up_after_the_attempt_limit() -> None:
    tracking = CloneTracking(attempt=3, progress="1%", progress_at=T0)
    decision = decide_clone(dv("Failed"), tracking, T0, POLICY)
    assert decision.action == CloneAction.GIVE_UP and "3 times" in decision.reason


def test_succeeded_is_done_and_terminating_waits() -> None:
    assert decide_clone(dv("Succeeded", "100.0%"), CloneTracking(), T0, POLICY).action == CloneAction.DONE
    old = dv("Failed")
    old["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert decide_clone(old, CloneTracking(), T0, POLICY).action == CloneAction.WAIT


def test_tracking_survives_a_round_trip_through_annotations() -> None:
    tracking = CloneTracking(attempt=2, progress="5%", progress_at=T0, retry_at=T0 + timedelta(seconds=5),
                             last_error="boom")
    annotations = {k: v for k, v in tracking.annotations().items() if v is not None}
    assert CloneTracking.from_annotations(annotations) == tracking
