"""The simulated cluster's state: restarts, real-time latency, two workers on one file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from cluster.models import NodePhase, NodeState, SessionWiring
from cluster.port import ClusterPort, PermanentClusterError
from cluster.simulated import SimulatedCluster
from cluster.simulated.clock import ManualClock
from tests.cluster.conftest import claim, ref, spec

pytestmark = pytest.mark.timeout(30)


def test_the_simulated_cluster_is_a_cluster_port(sim: SimulatedCluster) -> None:
    assert isinstance(sim, ClusterPort)


async def test_a_new_instance_on_the_same_file_sees_the_same_cluster(state_file: Path) -> None:
    clock = ManualClock()
    first = SimulatedCluster(state_file, boot_seconds=10, clock=clock)
    for i in range(3):
        await first.provision(spec(f"pool-{i}"))
        await first.mark_free(f"pool-{i}")
    await first.claim(claim("s1", 2))
    await first.wire(SessionWiring(session=ref("s1"), controlplane="pool-0", workers=["pool-1"]))
    clock.advance(10)
    address = (await first.node_status("pool-0")).address
    before = await first.inventory()
    await first.aclose()

    second = SimulatedCluster(state_file, boot_seconds=10, clock=clock)
    try:
        assert await second.inventory() == before
        assert (await second.node_status("pool-0")).address == address
        # Idempotency holds across the restart: the same claim returns the same nodes.
        again = await second.claim(claim("s1", 2))
        assert sorted(n.node_id for n in again.nodes) == ["pool-0", "pool-1"]
        assert await second.release("s1") == 2
    finally:
        await second.aclose()


async def test_boot_latency_in_real_time(state_file: Path) -> None:
    sim = SimulatedCluster(state_file, boot_seconds=0.2)
    try:
        await sim.provision(spec("cp-1"))
        assert (await sim.node_status("cp-1")).phase == NodePhase.PROVISIONING
        await asyncio.sleep(0.25)
        assert (await sim.node_status("cp-1")).phase == NodePhase.READY
    finally:
        await sim.aclose()


async def test_zero_latency_nodes_are_ready_at_once_with_distinct_addresses(state_file: Path) -> None:
    sim = SimulatedCluster(state_file)
    try:
        await asyncio.gather(*(sim.provision(spec(f"cp-{i}", session=f"s{i}")) for i in range(30)))
        statuses = await asyncio.gather(*(sim.node_status(f"cp-{i}") for i in range(30)))
        assert {s.phase for s in statuses} == {NodePhase.READY}
        assert len({s.address for s in statuses}) == 30
    finally:
        await sim.aclose()


async def test_two_workers_on_one_file_never_claim_the_same_node(state_file: Path) -> None:
    a = SimulatedCluster(state_file)
    b = SimulatedCluster(state_file)
    try:
        for i in range(20):
            await a.provision(spec(f"pool-{i}"))
            await a.mark_free(f"pool-{i}")
        results = await asyncio.gather(
            *((a if i % 2 else b).claim(claim(f"s{i}", 3)) for i in range(10))
        )
        claimed = [n.node_id for r in results for n in r.nodes]
        assert len(claimed) == len(set(claimed)) == 20
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_node_is_either_claimed_or_deleted_never_both(state_file: Path) -> None:
    """Session workers claim while the pool, in another thread on its own connection (another
    worker), deletes the same free nodes with delete_node_if_unclaimed."""
    sessions = SimulatedCluster(state_file)
    node_ids = [f"pool-{i:02}" for i in range(30)]
    try:
        for node_id in node_ids:
            await sessions.provision(spec(node_id))
            await sessions.mark_free(node_id)

        async def pool_deletes() -> dict[str, bool]:
            pool = SimulatedCluster(state_file)
            try:
                answers = await asyncio.gather(*(pool.delete_node_if_unclaimed(n) for n in reversed(node_ids)))
                return dict(zip(reversed(node_ids), answers, strict=True))
            finally:
                await pool.aclose()

        deleting = asyncio.create_task(asyncio.to_thread(asyncio.run, pool_deletes()))
        results = await asyncio.gather(*(sessions.claim(claim(f"s{i}", 2)) for i in range(12)))
        deleted = await deleting
        claimed = {n.node_id: n.session.session_id for r in results for n in r.nodes if n.session}
        kept = {n.node_id: n for n in (await sessions.inventory()).nodes}
        for node_id in node_ids:
            if deleted[node_id]:
                assert node_id not in claimed and node_id not in kept
            else:
                assert node_id in claimed and kept[node_id].state == NodeState.CLAIMED
                assert kept[node_id].session is not None
                assert kept[node_id].session.session_id == claimed[node_id]
        assert set(kept) == set(claimed)
    finally:
        await sessions.aclose()


async def test_wire_refuses_nodes_of_another_session(sim: SimulatedCluster) -> None:
    await sim.provision(spec("s1-cp", session="s1"))
    await sim.provision(spec("s2-w", "worker", session="s2"))
    with pytest.raises(PermanentClusterError, match="s2-w belongs to session s2"):
        await sim.wire(SessionWiring(session=ref("s1"), controlplane="s1-cp", workers=["s2-w"]))
    assert [s.kinds for s in (await sim.inventory()).sessions] == [["node"], ["node"]]


async def test_provision_of_an_existing_node_keeps_its_state(sim: SimulatedCluster) -> None:
    await sim.provision(spec("pool-1"))
    await sim.mark_free("pool-1")
    assert (await sim.provision(spec("pool-1"))).state == NodeState.FREE


async def test_exposed_port_capacity_is_reported_and_enforced(state_file: Path) -> None:
    sim = SimulatedCluster(state_file, exposed_ports_capacity=1)
    try:
        for s in ("s1", "s2"):
            await sim.provision(spec(f"{s}-cp", session=s))
        await sim.expose("s1", "s1-cp")
        inventory = await sim.inventory()
        assert (inventory.exposed_ports_in_use, inventory.exposed_ports_capacity) == (1, 1)
        with pytest.raises(Exception, match="exposed ports are in use"):
            await sim.expose("s2", "s2-cp")
        await sim.unexpose("s1")
        await sim.expose("s2", "s2-cp")
    finally:
        await sim.aclose()


async def test_a_writer_in_another_process_delays_calls_without_blocking_the_loop(
    sim: SimulatedCluster, state_file: Path
) -> None:
    await sim.provision(spec("pool-1"))
    await sim.mark_free("pool-1")
    other = sqlite3.connect(state_file, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker holds the write lock
    try:
        claiming = asyncio.create_task(sim.claim(claim("s1")))
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        assert not claiming.done() and ticks == 5
    finally:
        other.execute("COMMIT")
        other.close()
    result = await asyncio.wait_for(claiming, 5)
    assert [n.node_id for n in result.nodes] == ["pool-1"]
