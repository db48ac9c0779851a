"""Pause/unpause of lab VMs on the kubevirt backend: KubeVirt's VMI pause/unpause subresources
(`subresources.kubevirt.io/v1`), against the emulator playing virt-api."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.kubevirt import labels as L
from cluster.kubevirt.api import PERMISSIONS, KubeApi
from cluster.kubevirt.backend import KubeVirtCluster
from cluster.kubevirt.status import parse_node_status
from cluster.models import NodePhase, NodeSpec, SessionRef
from cluster.port import NodeNotFound, PermanentClusterError
from labs.models import ContainerDiskSource, Role
from tests.kubevirt.emulator import LabEmulator, VirtController

pytestmark = pytest.mark.timeout(30)

IMAGE = "127.0.0.1:5000/labrador/cp@sha256:" + "d" * 64


def spec(node_id: str) -> NodeSpec:
    return NodeSpec(node_id=node_id, node_class="cp", role=Role.CONTROLPLANE, image=IMAGE,
                    kubernetes_version="1.31.2", cpu_cores=1, memory="1536Mi", disk=ContainerDiskSource(),
                    session=SessionRef(session_id="s1", workflow_id="lab-session/s1", run_id="r1"))


async def running_node(cluster: KubeVirtCluster, virt: VirtController, node_id: str = "s1-cp") -> str:
    await cluster.provision(spec(node_id))
    virt.running(node_id, "10.244.0.7")
    assert (await cluster.node_status(node_id)).phase == NodePhase.READY
    return node_id


def puts(emulator: LabEmulator) -> list[str]:
    return [f"{ns}/{name}/{action}" for method, ns, name, action in emulator.subresource_calls if method == "PUT"]


async def test_pause_puts_the_subresource_and_the_node_reports_paused(
    cluster: KubeVirtCluster, emulator: LabEmulator, virt: VirtController
) -> None:
    node = await running_node(cluster, virt)
    await cluster.pause_node(node)
    assert puts(emulator) == ["lab-s1-cp/s1-cp/pause"]
    status = await cluster.node_status(node)
    assert status.phase == NodePhase.PAUSED and status.address == "10.244.0.7"
    await cluster.unpause_node(node)
    assert puts(emulator)[-1] == "lab-s1-cp/s1-cp/unpause"
    assert (await cluster.node_status(node)).phase == NodePhase.READY


async def test_pause_and_unpause_are_idempotent(
    cluster: KubeVirtCluster, emulator: LabEmulator, virt: VirtController
) -> None:
    node = await running_node(cluster, virt)
    await cluster.pause_node(node)
    await cluster.pause_node(node)  # virt-api answers 409 "VMI is already paused": success
    assert (await cluster.node_status(node)).phase == NodePhase.PAUSED
    await cluster.unpause_node(node)
    await cluster.unpause_node(node)  # 409 "VMI is not paused": success
    assert (await cluster.node_status(node)).phase == NodePhase.READY
    assert len(puts(emulator)) == 4


async def test_pausing_a_vm_that_is_not_running_is_a_clear_permanent_error(
    cluster: KubeVirtCluster, virt: VirtController
) -> None:
    await cluster.provision(spec("s1-cp"))
    virt.vmi("s1-cp", "Scheduling")
    with pytest.raises(PermanentClusterError, match=r"node s1-cp: cannot pause .*lab-s1-cp/s1-cp: .*not running"):
        await cluster.pause_node("s1-cp")


async def test_pausing_an_unknown_node_is_not_found(cluster: KubeVirtCluster) -> None:
    with pytest.raises(NodeNotFound, match="node gone"):
        await cluster.pause_node("gone")
    with pytest.raises(NodeNotFound, match="node gone"):
        await cluster.unpause_node("gone")


async def test_pause_calls_are_declared_for_the_rbac(
    cluster: KubeVirtCluster, sync_api: KubeApi, virt: VirtController
) -> None:
    node = await running_node(cluster, virt)
    await cluster.pause_node(node)
    await cluster.pause_node(node)
    await cluster.unpause_node(node)
    declared = {(g, r, v) for g, r, v, _ in PERMISSIONS}
    assert sync_api.calls <= declared
    assert {("subresources.kubevirt.io", "virtualmachineinstances/pause", "update"),
            ("subresources.kubevirt.io", "virtualmachineinstances/unpause", "update")} <= sync_api.calls


def test_a_paused_vmi_is_paused_not_not_ready() -> None:
    ns = {"metadata": {"name": "lab-n1", "labels": {L.NODE_ID: "n1", L.STATE: "claimed"}}}
    vm: dict[str, Any] = {"metadata": {"name": "n1", "namespace": "lab-n1"}, "status": {"printableStatus": "Paused"}}
    vmi = VirtController.vmi_body("lab-n1", "n1", "Running", ready=False, ip="10.244.0.9")
    vmi["status"]["conditions"].append({"type": "Paused", "status": "True", "reason": "PausedByUser"})
    status = parse_node_status("n1", ns, vm, vmi)
    assert status.phase == NodePhase.PAUSED and status.address == "10.244.0.9"
