"""Cluster activities map the port's errors and resume their waits (no server needed)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.cluster_activities import ClusterActivities
from cluster.models import NodePhase, NodeSpec, SessionRef, SessionWiring, SshEndpoint
from cluster.port import ClusterUnavailable, PermanentClusterError
from labs.models import ContainerDiskSource, Role
from workflows.models import ExposeInput, NodeRef, PrepareNodesInput, WaitReadyInput

from .fakes import MemoryCluster


class RefusingCluster(MemoryCluster):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def expose(self, session_id: str, node_id: str) -> SshEndpoint:
        raise self.error


async def test_a_permanent_port_error_becomes_a_non_retryable_error_with_its_message() -> None:
    activities = ClusterActivities(RefusingCluster(PermanentClusterError("service s-1-ssh: NodePorts exhausted")))
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.expose_ssh, ExposeInput(session_id="s-1", node_id="n-1"))
    assert raised.value.non_retryable and raised.value.message == "service s-1-ssh: NodePorts exhausted"


async def test_an_unavailable_cluster_is_a_retryable_error() -> None:
    activities = ClusterActivities(RefusingCluster(ClusterUnavailable("503 from the API server")))
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.expose_ssh, ExposeInput(session_id="s-1", node_id="n-1"))
    assert not raised.value.non_retryable and "503" in raised.value.message


async def test_wait_ready_heartbeats_and_returns_the_address_once_ready() -> None:
    port = MemoryCluster()
    port.add_warm("n-1", "cp", Role.CONTROLPLANE)
    port.statuses["n-1"] = NodePhase.PROVISIONING
    env = ActivityEnvironment()
    beats: list[object] = []

    def on_heartbeat(*details: object) -> None:
        beats.append(details)
        port.statuses["n-1"] = NodePhase.READY  # becomes ready after the first poll

    env.on_heartbeat = on_heartbeat
    status = await env.run(ClusterActivities(port).wait_node_ready,
                           WaitReadyInput(node_id="n-1", poll_interval=timedelta(milliseconds=10)))
    assert status.phase == NodePhase.READY and status.address and len(beats) == 1


async def test_a_retried_wait_counts_its_timeout_from_the_first_attempt() -> None:
    port = MemoryCluster()
    port.add_warm("n-1", "cp", Role.CONTROLPLANE)
    port.statuses["n-1"] = NodePhase.PROVISIONING
    env = ActivityEnvironment()
    first_started = datetime.now(UTC) - timedelta(minutes=11)
    env.info = dataclasses.replace(env.info, heartbeat_details=[first_started.isoformat()])
    with pytest.raises(ApplicationError) as raised:
        await env.run(ClusterActivities(port).wait_node_ready,
                      WaitReadyInput(node_id="n-1", timeout=timedelta(minutes=10)))
    assert raised.value.non_retryable and "not ready after 0:10:00" in raised.value.message


async def test_a_failed_node_stops_the_wait_naming_node_and_cause() -> None:
    port = MemoryCluster()
    port.fail_reason = "ErrImagePull: no such image"
    await port.provision(_spec("n-9"))
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(ClusterActivities(port).wait_node_ready, WaitReadyInput(node_id="n-9"))
    assert raised.value.non_retryable and raised.value.message == "node n-9 failed: ErrImagePull: no such image"
    missing = await ActivityEnvironment().run(ClusterActivities(port).node_health, NodeRef(node_id="gone"))
    assert missing.phase == NodePhase.MISSING


def _spec(node_id: str) -> NodeSpec:
    return NodeSpec(node_id=node_id, node_class="cp", role=Role.CONTROLPLANE, image="img:1",
                    kubernetes_version="1.31.0", cpu_cores=1, memory="1Gi", disk=ContainerDiskSource())


def _prepare_request(node_id: str) -> PrepareNodesInput:
    session = SessionRef(session_id="s-prep", workflow_id="lab-session/prep", run_id="r-1")
    spec = NodeSpec(node_id=node_id, node_class="cp-1-31", role=Role.CONTROLPLANE, image="img:1",
                    kubernetes_version="1.31.0", cpu_cores=1, memory="1Gi", disk=ContainerDiskSource(),
                    session=session)
    return PrepareNodesInput(provision=[spec], nodes=[node_id],
                             wiring=SessionWiring(session=session, controlplane=node_id),
                             credentials_for=session.session_id)


async def test_prepare_nodes_rides_out_a_passing_api_error_without_failing_the_whole_call() -> None:
    port = MemoryCluster()
    port.unavailable_method, port.unavailable_calls = "provision", 2  # two blips: tried again at once
    activities = ClusterActivities(port, key_pair=lambda comment: (f"PRIVATE-{comment}", f"ssh-ed25519 AAAA {comment}"))
    result = await ActivityEnvironment().run(activities.prepare_nodes, _prepare_request("n-prep"))
    assert result.wired and [s.phase for s in result.statuses] == [NodePhase.READY]
    assert port.wired == {"s-prep"} and result.credentials is not None
    assert result.credentials.private_key == "PRIVATE-labrador-student-s-prep"

    port.unavailable_method, port.unavailable_calls = "provision", 3  # an outage: the activity's retry
    with pytest.raises(ApplicationError, match="cluster unavailable"):
        await ActivityEnvironment().run(activities.prepare_nodes, _prepare_request("n-other"))


def _claim_and_prepare(port: MemoryCluster, session_id: str, workers: int = 2) -> Any:
    from cluster.models import ClaimRequest, ClaimWant
    from workflows.models import ClaimAndPrepareInput

    from .fakes import make_lab

    lab = make_lab(workers=workers)
    session = SessionRef(session_id=session_id, workflow_id=f"lab-session/{session_id}", run_id="r-1")
    wants = [ClaimWant(node_class="cp-1-31", count=1)] + (
        [ClaimWant(node_class="worker-1-31", count=workers)] if workers else [])
    activities = ClusterActivities(port, key_pair=lambda comment: (f"PRIVATE-{comment}", f"ssh-ed25519 AAAA {comment}"))
    request = ClaimAndPrepareInput(claim=ClaimRequest(session=session, wants=wants), lab_nodes=list(lab.nodes),
                                   credentials_for=session_id)
    return ActivityEnvironment().run(activities.claim_and_prepare_nodes, request)


def _warm_pool(port: MemoryCluster, workers: int) -> None:
    port.add_warm("w-cp", "cp-1-31", Role.CONTROLPLANE)
    for index in range(workers):
        port.add_warm(f"w-worker-{index}", "worker-1-31", Role.WORKER)


async def test_claim_and_prepare_prepares_a_start_the_pool_had_every_node_for() -> None:
    port = MemoryCluster()
    _warm_pool(port, workers=2)
    result = await _claim_and_prepare(port, "s-warm")
    assert sorted(n.node_id for n in result.claim.nodes) == ["w-cp", "w-worker-0", "w-worker-1"]
    assert result.prepared is not None and result.prepared.wired and port.wired == {"s-warm"}
    assert [s.node_id for s in result.prepared.statuses] == ["w-cp", "w-worker-0", "w-worker-1"]  # lab order
    assert result.prepared.credentials is not None
    assert result.prepared.credentials.private_key == "PRIVATE-labrador-student-s-warm"
    again = await _claim_and_prepare(port, "s-warm")  # a retry: the same nodes, prepared again
    assert sorted(n.node_id for n in again.claim.nodes) == ["w-cp", "w-worker-0", "w-worker-1"]
    assert again.prepared is not None and again.prepared.wired


async def test_claim_and_prepare_leaves_a_start_with_cold_nodes_to_the_workflow() -> None:
    port = MemoryCluster()
    _warm_pool(port, workers=1)  # one worker short: a cold node follows, after the capacity queue
    result = await _claim_and_prepare(port, "s-part")
    assert sorted(n.node_id for n in result.claim.nodes) == ["w-cp", "w-worker-0"]
    assert result.prepared is None and port.wired == set() and port.provision_calls == []


async def test_claim_and_prepare_answers_the_claim_when_preparing_fails() -> None:
    port = MemoryCluster()
    _warm_pool(port, workers=0)
    port.unavailable_method, port.unavailable_calls = "node_status", 3  # past prepare's own quick tries
    result = await _claim_and_prepare(port, "s-blip", workers=0)
    assert [n.node_id for n in result.claim.nodes] == ["w-cp"]  # claimed: the workflow knows its node
    assert result.prepared is None and port.wired == set()  # ... and prepares it with its own call
