"""Fault injection in the simulated cluster: what a workflow would observe."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.models import NodePhase
from cluster.port import ClusterUnavailable
from cluster.simulated import BootFailure, FaultPlan, ImagePullError, NodeDeath, SimulatedCluster
from cluster.simulated.clock import ManualClock
from labrador.settings import Settings
from tests.cluster.conftest import claim, spec

pytestmark = pytest.mark.timeout(30)


async def test_boot_failure_turns_matching_nodes_failed_after_the_boot_latency(
    sim: SimulatedCluster, clock: ManualClock
) -> None:
    sim.faults = FaultPlan(boot_failures=[BootFailure(nodes="^bad-", reason="VMI Failed: kernel panic")])
    await sim.provision(spec("bad-1"))
    await sim.provision(spec("good-1"))
    assert (await sim.node_status("bad-1")).phase == NodePhase.PROVISIONING
    clock.advance(10)
    failed = await sim.node_status("bad-1")
    assert (failed.phase, failed.reason) == (NodePhase.FAILED, "VMI Failed: kernel panic")
    assert (await sim.node_status("good-1")).phase == NodePhase.READY


async def test_boot_failure_rate_is_seeded_and_independent_of_call_order(state_file: Path) -> None:
    def failing(seed: int, order: list[str]) -> set[str]:
        plan = FaultPlan(seed=seed, boot_failures=[BootFailure(rate=0.5)])
        return {n for n in order if plan.boot_failure(n, "cp")}

    names = [f"node-{i}" for i in range(60)]
    first = failing(7, names)
    assert 10 < len(first) < 50
    assert failing(7, list(reversed(names))) == first
    assert failing(8, names) != first


async def test_image_pull_error_fails_nodes_of_matching_images_with_err_image_pull(sim: SimulatedCluster) -> None:
    sim.faults = FaultPlan(image_pull_errors=[ImagePullError(images=r":broken$")])
    await sim.provision(spec("cp-1", image="127.0.0.1:5000/labrador/node:broken"))
    await sim.provision(spec("cp-2"))
    status = await sim.node_status("cp-1")
    assert status.phase == NodePhase.FAILED
    assert status.reason and "ErrImagePull" in status.reason and "node:broken" in status.reason
    assert (await sim.node_status("cp-2")).phase == NodePhase.PROVISIONING


async def test_node_dies_mid_session_and_recovers(sim: SimulatedCluster, clock: ManualClock) -> None:
    sim.faults = FaultPlan(node_deaths=[NodeDeath(nodes="^doomed", after_seconds=60, recover_after_seconds=30)])
    for node_id in ("doomed-1", "doomed-pool", "healthy"):
        await sim.provision(spec(node_id))
        await sim.mark_free(node_id)
    clock.advance(10)  # booted
    await sim.provision(spec("healthy-cold", session="s1"))
    result = await sim.claim(claim("s1", 2))
    assert {n.node_id for n in result.nodes} >= {"doomed-1"}

    assert (await sim.node_status("doomed-1")).phase == NodePhase.READY
    clock.advance(61)
    dead = await sim.node_status("doomed-1")
    assert dead.phase == NodePhase.NOT_READY and dead.reason and "simulated node death" in dead.reason
    # Free nodes do not die: the fault is about sessions.
    assert (await sim.node_status("doomed-pool")).phase == NodePhase.READY
    assert (await sim.node_status("healthy")).phase == NodePhase.READY
    clock.advance(30)
    assert (await sim.node_status("doomed-1")).phase == NodePhase.READY


async def test_node_death_without_recovery_stays_not_ready(sim: SimulatedCluster, clock: ManualClock) -> None:
    sim.faults = FaultPlan(node_deaths=[NodeDeath(after_seconds=5)])
    await sim.provision(spec("cold-cp", session="s1"))
    clock.advance(10 + 5)
    assert (await sim.node_status("cold-cp")).phase == NodePhase.NOT_READY
    clock.advance(3600)
    assert (await sim.node_status("cold-cp")).phase == NodePhase.NOT_READY


async def test_api_errors_raise_cluster_unavailable_and_change_nothing(sim: SimulatedCluster) -> None:
    sim.faults = FaultPlan(api_error_rate=1.0, api_error_methods=["provision"])
    with pytest.raises(ClusterUnavailable, match="simulated API error in provision"):
        await sim.provision(spec("cp-1"))
    assert (await sim.inventory()).nodes == []
    sim.faults = FaultPlan()
    await sim.provision(spec("cp-1"))
    assert len((await sim.inventory()).nodes) == 1


async def test_api_error_rate_is_seeded(state_file: Path) -> None:
    async def outcomes(seed: int) -> list[bool]:
        sim = SimulatedCluster(state_file, faults=FaultPlan(seed=seed, api_error_rate=0.3))
        seen = []
        for _ in range(40):
            try:
                await sim.inventory()
                seen.append(True)
            except ClusterUnavailable:
                seen.append(False)
        await sim.aclose()
        return seen

    first = await outcomes(3)
    assert 3 <= first.count(False) <= 25
    assert await outcomes(3) == first
    assert await outcomes(4) != first


async def test_settings_configure_latency_and_faults_from_a_yaml_file(tmp_path: Path) -> None:
    plan_file = tmp_path / "faults.yaml"
    plan_file.write_text(
        "seed: 1\n"
        "image_pull_errors:\n"
        "  - images: 'node:typo$'\n"
        "node_deaths:\n"
        "  - after_seconds: 120\n"
        "    recover_after_seconds: 10\n"
    )
    settings = Settings(data_dir=tmp_path / "data", sim_boot_seconds=2.5, sim_faults_file=plan_file)
    sim = SimulatedCluster.from_settings(settings)
    try:
        assert sim.path == tmp_path / "data" / "simulated-cluster.sqlite"
        assert sim.boot_seconds == 2.5
        assert sim.faults.image_pull_errors[0].images == "node:typo$"
        assert sim.faults.node_deaths[0].recover_after_seconds == 10
        await sim.provision(spec("cp-1", image="r/node:typo"))
        assert (await sim.node_status("cp-1")).phase == NodePhase.FAILED
    finally:
        await sim.aclose()


def test_a_bad_fault_plan_names_the_file_and_the_field(tmp_path: Path) -> None:
    plan_file = tmp_path / "faults.yaml"
    plan_file.write_text("api_error_rate: 2\n")
    with pytest.raises(ValueError, match=r"faults\.yaml.*api_error_rate"):
        FaultPlan.from_file(plan_file)
    plan_file.write_text("boot_failures:\n  - nodes: '(['\n")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        FaultPlan.from_file(plan_file)


async def test_the_dev_stack_picks_up_edits_to_the_fault_plan_file(tmp_path: Path) -> None:
    plan_file = tmp_path / "faults.yaml"
    plan_file.write_text("seed: 1\n")
    sim = SimulatedCluster.from_settings(Settings(data_dir=tmp_path, sim_faults_file=plan_file))
    sim.reload_interval = 0.0
    try:
        await sim.provision(spec("cp-1", image="r/node:v2"))
        assert (await sim.node_status("cp-1")).phase == NodePhase.READY
        plan_file.write_text("image_pull_errors:\n  - images: 'node:v2$'\n")
        assert (await sim.node_status("cp-1")).phase == NodePhase.FAILED
        plan_file.write_text("image_pull_errors: [{images: '(['}]\n")  # broken: the last good plan stays
        assert (await sim.node_status("cp-1")).phase == NodePhase.FAILED
        plan_file.write_text("{}\n")
        assert (await sim.node_status("cp-1")).phase == NodePhase.READY
    finally:
        await sim.aclose()
