"""Cluster activities map the port's errors and resume their waits (no server needed)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

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
