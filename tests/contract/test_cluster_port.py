"""The cluster port's contract: every backend passes this module (see conftest.BACKENDS)."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncssh
import pytest

from cluster.models import (
    ClaimRequest,
    ClaimWant,
    NodePhase,
    NodeSpec,
    NodeState,
    SessionLeftovers,
    SessionRef,
    SessionWiring,
    count_usage,
)
from cluster.port import ClusterPort, CountsUsage, NodeNotFound, PermanentClusterError
from labs.models import ContainerDiskSource, Role
from tests.contract.conftest import Backend

pytestmark = pytest.mark.timeout(30)

CP = "cp-v131"
WORKER = "worker-v131"


def spec(node_id: str, node_class: str = CP, session: SessionRef | None = None) -> NodeSpec:
    role = Role.CONTROLPLANE if node_class == CP else Role.WORKER
    return NodeSpec(
        node_id=node_id,
        node_class=node_class,
        role=role,
        image="127.0.0.1:5000/labrador/node:v1.31.2",
        kubernetes_version="1.31.2",
        cpu_cores=1,
        memory="1536Mi" if role == Role.CONTROLPLANE else "1126Mi",
        disk=ContainerDiskSource(),
        session=session,
    )


def ref(session_id: str) -> SessionRef:
    return SessionRef(session_id=session_id, workflow_id=f"lab-session/{session_id}", run_id=f"run-{session_id}")


def want(session_id: str, **counts: int) -> ClaimRequest:
    classes = {"cp": CP, "worker": WORKER}
    return ClaimRequest(
        session=ref(session_id),
        wants=[ClaimWant(node_class=classes[k], count=v) for k, v in counts.items()],
    )


async def free_nodes(port: ClusterPort, *node_ids: str, node_class: str = CP) -> None:
    for node_id in node_ids:
        await port.provision(spec(node_id, node_class))
        await port.mark_free(node_id)


async def session_of(port: ClusterPort, session_id: str) -> list[str]:
    inventory = await port.inventory()
    return sorted(n.node_id for n in inventory.nodes if n.session and n.session.session_id == session_id)


# --- node level -------------------------------------------------------------------------------
async def test_provision_is_create_or_get(port: ClusterPort) -> None:
    first = await port.provision(spec("pool-cp-1"))
    again = await port.provision(spec("pool-cp-1"))
    assert first.state == NodeState.PROVISIONING and first.session is None
    assert again == first
    inventory = await port.inventory()
    assert [n.node_id for n in inventory.nodes] == ["pool-cp-1"]
    assert inventory.nodes[0].memory_bytes == 1536 * 2**20


async def test_status_goes_provisioning_then_ready_with_address(backend: Backend) -> None:
    port = backend.port
    assert (await port.node_status("never-made")).phase == NodePhase.MISSING
    await port.provision(spec("pool-cp-1"))
    booting = await port.node_status("pool-cp-1")
    assert booting.phase == NodePhase.PROVISIONING and booting.address is None
    await backend.make_ready("pool-cp-1")
    ready = await port.node_status("pool-cp-1")
    assert ready.phase == NodePhase.READY
    assert ready.address
    await port.delete_node("pool-cp-1")
    assert (await port.node_status("pool-cp-1")).phase == NodePhase.MISSING


async def test_mark_free_is_idempotent_and_refuses_claimed_or_unknown_nodes(port: ClusterPort) -> None:
    await port.provision(spec("pool-cp-1"))
    assert (await port.mark_free("pool-cp-1")).state == NodeState.FREE
    assert (await port.mark_free("pool-cp-1")).state == NodeState.FREE
    with pytest.raises(NodeNotFound):
        await port.mark_free("never-made")
    await port.provision(spec("cold-cp", session=ref("s1")))
    with pytest.raises(PermanentClusterError, match="cold-cp"):
        await port.mark_free("cold-cp")
    assert (await port.inventory()).nodes[1].state == NodeState.CLAIMED


async def test_delete_node_is_idempotent(port: ClusterPort) -> None:
    await free_nodes(port, "pool-cp-1", "pool-cp-2")
    await port.delete_node("pool-cp-1")
    await port.delete_node("pool-cp-1")
    await port.delete_node("never-made")
    assert [n.node_id for n in (await port.inventory()).nodes] == ["pool-cp-2"]


async def test_delete_if_unclaimed_deletes_free_and_provisioning_nodes(port: ClusterPort) -> None:
    await free_nodes(port, "pool-cp-1", "pool-cp-2")
    await port.provision(spec("pool-cp-3"))  # still provisioning
    assert await port.delete_node_if_unclaimed("pool-cp-1") is True
    assert await port.delete_node_if_unclaimed("pool-cp-3") is True
    assert await port.delete_node_if_unclaimed("pool-cp-1") is True  # absent: done
    assert await port.delete_node_if_unclaimed("never-made") is True
    assert (await port.node_status("pool-cp-1")).phase == NodePhase.MISSING
    assert [n.node_id for n in (await port.inventory()).nodes] == ["pool-cp-2"]
    assert [n.node_id for n in (await port.claim(want("s1", cp=2))).nodes] == ["pool-cp-2"]


async def test_delete_if_unclaimed_refuses_a_claimed_node_and_keeps_it(port: ClusterPort) -> None:
    await free_nodes(port, "pool-cp-1")
    await port.provision(spec("cold-cp", session=ref("s2")))
    (held,) = (await port.claim(want("s1", cp=1))).nodes
    assert await port.delete_node_if_unclaimed(held.node_id) is False
    assert await port.delete_node_if_unclaimed("cold-cp") is False
    assert await session_of(port, "s1") == [held.node_id]
    assert await session_of(port, "s2") == ["cold-cp"]
    assert (await port.node_status(held.node_id)).phase != NodePhase.MISSING


async def test_a_deleted_claimed_node_leaves_its_session(port: ClusterPort) -> None:
    await free_nodes(port, "pool-cp-1", "pool-cp-2", "pool-cp-3")
    held = await port.claim(want("s1", cp=2))
    gone = held.nodes[0].node_id
    await port.delete_node(gone)
    assert (await port.node_status(gone)).phase == NodePhase.MISSING
    assert len((await port.claim(want("s1", cp=1))).nodes) == 1
    assert await port.release("s1") == 1
    spare = {"pool-cp-1", "pool-cp-2", "pool-cp-3"} - {n.node_id for n in held.nodes}
    assert {n.node_id for n in (await port.inventory()).nodes} == spare


async def test_ssh_target_of_unknown_node_is_not_found(port: ClusterPort) -> None:
    with pytest.raises(NodeNotFound, match="never-made"):
        await port.ssh_target("never-made")


@pytest.mark.needs_ssh_server
async def test_ssh_target_is_reachable_as_root_and_records_commands(
    backend: Backend, client_key: asyncssh.SSHKey
) -> None:
    port = backend.port
    await port.provision(spec("cold-cp", session=ref("s1")))
    await backend.make_ready("cold-cp")
    target = await port.ssh_target("cold-cp")
    assert target.username == "root" and target.host == "127.0.0.1"
    assert await port.ssh_target("cold-cp") == target
    async with asyncssh.connect(
        target.host, target.port, username=target.username, client_keys=[client_key], known_hosts=None
    ) as conn:
        result = await conn.run("kubectl get nodes", check=True)
        assert result.exit_status == 0
    assert backend.commands is not None
    assert backend.commands("cold-cp") == ["kubectl get nodes"]


# --- pause ----------------------------------------------------------------------------------------
async def test_pause_and_unpause_are_idempotent_and_show_in_status(backend: Backend) -> None:
    port = backend.port
    await port.provision(spec("cold-cp", session=ref("s1")))
    await backend.make_ready("cold-cp")
    await port.pause_node("cold-cp")
    await port.pause_node("cold-cp")  # pausing a paused node is success
    paused = await port.node_status("cold-cp")
    assert paused.phase == NodePhase.PAUSED and paused.address
    await port.unpause_node("cold-cp")
    await port.unpause_node("cold-cp")  # so is unpausing a running one
    assert (await port.node_status("cold-cp")).phase == NodePhase.READY
    assert await session_of(port, "s1") == ["cold-cp"]  # a pause changes nothing about ownership


async def test_pause_of_an_unknown_node_is_not_found(port: ClusterPort) -> None:
    with pytest.raises(NodeNotFound, match="never-made"):
        await port.pause_node("never-made")
    with pytest.raises(NodeNotFound, match="never-made"):
        await port.unpause_node("never-made")


async def test_a_paused_node_is_released_like_any_other(backend: Backend) -> None:
    port = backend.port
    await port.provision(spec("cold-cp", session=ref("s1")))
    await backend.make_ready("cold-cp")
    await port.pause_node("cold-cp")
    assert await port.release("s1") == 1
    assert (await port.node_status("cold-cp")).phase == NodePhase.MISSING


@pytest.mark.needs_ssh_server
async def test_a_paused_node_refuses_ssh_and_answers_after_unpause(
    backend: Backend, client_key: asyncssh.SSHKey
) -> None:
    port = backend.port
    await port.provision(spec("cold-cp", session=ref("s1")))
    await backend.make_ready("cold-cp")
    target = await port.ssh_target("cold-cp")
    await port.expose("s1", "cold-cp")
    exposed = await port.expose("s1", "cold-cp")
    await port.pause_node("cold-cp")
    for where in (target.port, exposed.port):
        with pytest.raises(OSError):
            await asyncssh.connect(target.host, where, username="root", client_keys=[client_key], known_hosts=None)
    assert (await port.ssh_target("cold-cp")).port == target.port  # where it was; nothing answers there
    await port.unpause_node("cold-cp")
    again = await port.ssh_target("cold-cp")
    for where in (again.port, exposed.port):
        async with asyncssh.connect(
            target.host, where, username="root", client_keys=[client_key], known_hosts=None
        ) as conn:
            assert (await conn.run("true", check=True)).exit_status == 0


# --- claims ------------------------------------------------------------------------------------
async def test_claim_takes_only_free_nodes_of_the_wanted_classes(port: ClusterPort) -> None:
    await free_nodes(port, "pool-cp-1", "pool-cp-2")
    await free_nodes(port, "pool-w-1", "pool-w-2", "pool-w-3", node_class=WORKER)
    await port.provision(spec("pool-cp-booting"))

    result = await port.claim(want("s1", cp=1, worker=2))

    assert Counter(n.node_class for n in result.nodes) == {CP: 1, WORKER: 2}
    for node in result.nodes:
        assert node.state == NodeState.CLAIMED
        assert node.session == ref("s1")
    assert sorted(n.node_id for n in result.nodes) == await session_of(port, "s1")
    states = {n.node_id: n.state for n in (await port.inventory()).nodes}
    assert states["pool-cp-booting"] == NodeState.PROVISIONING


async def test_claim_returns_fewer_when_the_pool_runs_short(port: ClusterPort) -> None:
    await free_nodes(port, "pool-cp-1")
    result = await port.claim(want("s1", cp=1, worker=2))
    assert [n.node_id for n in result.nodes] == ["pool-cp-1"]
    assert (await port.claim(want("s2", cp=1))).nodes == []


async def test_a_free_node_deleted_while_claiming_means_the_next_node(port: ClusterPort) -> None:
    """A listed free node deleted before it is claimed is passed by, not an error (kubevirt: the
    claim patch answers 404; tests/kubevirt/test_cache.py injects it; simulated: the claim and
    the delete are each one transaction, so the claim simply never sees the node)."""
    import asyncio

    await free_nodes(port, "pool-cp-1", "pool-cp-2", "pool-cp-3")
    await port.delete_node("pool-cp-1")
    _, result = await asyncio.gather(port.delete_node("pool-cp-2"), port.claim(want("s1", cp=2)))
    claimed = {n.node_id for n in result.nodes}
    assert "pool-cp-1" not in claimed and "pool-cp-3" in claimed and 1 <= len(claimed) <= 2


async def test_claim_is_idempotent_for_the_same_session(port: ClusterPort) -> None:
    await free_nodes(port, "pool-cp-1", "pool-cp-2", "pool-cp-3")
    first = await port.claim(want("s1", cp=1))
    again = await port.claim(want("s1", cp=1))
    assert [n.node_id for n in again.nodes] == [n.node_id for n in first.nodes]
    more = await port.claim(want("s1", cp=2))
    assert len(more.nodes) == 2
    assert {n.node_id for n in first.nodes} < {n.node_id for n in more.nodes}
    assert Counter(n.state for n in (await port.inventory()).nodes) == {NodeState.CLAIMED: 2, NodeState.FREE: 1}


async def test_cold_provisioned_node_counts_towards_the_claim(port: ClusterPort) -> None:
    await free_nodes(port, "pool-cp-1")
    cold = await port.provision(spec("s1-cp", session=ref("s1")))
    assert cold.state == NodeState.CLAIMED and cold.session == ref("s1")
    result = await port.claim(want("s1", cp=1))
    assert [n.node_id for n in result.nodes] == ["s1-cp"]
    assert {n.node_id: n.state for n in (await port.inventory()).nodes}["pool-cp-1"] == NodeState.FREE


@pytest.mark.needs_real_concurrency
async def test_concurrent_claims_never_share_a_node(port: ClusterPort) -> None:
    await free_nodes(port, *[f"pool-cp-{i}" for i in range(10)])
    await free_nodes(port, *[f"pool-w-{i}" for i in range(14)], node_class=WORKER)

    results = await asyncio.gather(*(port.claim(want(f"s{i}", cp=1, worker=2)) for i in range(12)))

    claimed = [n.node_id for r in results for n in r.nodes]
    assert len(claimed) == len(set(claimed)), "a node was handed to two sessions"
    assert len(claimed) == 24  # every free node went to someone, nothing invented
    for i, result in enumerate(results):
        assert sorted(n.node_id for n in result.nodes) == await session_of(port, f"s{i}")


# --- wiring, exposure, release -----------------------------------------------------------------
async def make_session(port: ClusterPort, session_id: str) -> list[str]:
    await free_nodes(port, f"{session_id}-cp")
    await free_nodes(port, f"{session_id}-w1", node_class=WORKER)
    result = await port.claim(want(session_id, cp=1, worker=1))
    return sorted(n.node_id for n in result.nodes)


def kinds_of(inventory_sessions: list[SessionLeftovers], session_id: str) -> set[str]:
    return {k for s in inventory_sessions if s.session_id == session_id for k in s.kinds}


async def test_wire_and_unwire_are_idempotent(port: ClusterPort) -> None:
    await make_session(port, "s1")
    wiring = SessionWiring(session=ref("s1"), controlplane="s1-cp", workers=["s1-w1"])
    await port.wire(wiring)
    await port.wire(wiring)
    assert "networkpolicy" in kinds_of((await port.inventory()).sessions, "s1")
    await port.unwire("s1")
    await port.unwire("s1")
    await port.unwire("never-wired")
    assert "networkpolicy" not in kinds_of((await port.inventory()).sessions, "s1")


async def test_expose_and_unexpose_are_idempotent(port: ClusterPort) -> None:
    await make_session(port, "s1")
    endpoint = await port.expose("s1", "s1-cp")
    assert await port.expose("s1", "s1-cp") == endpoint
    assert endpoint.username == "root" and endpoint.port > 0
    inventory = await port.inventory()
    assert inventory.exposed_ports_in_use == 1
    assert "service" in kinds_of(inventory.sessions, "s1")
    await port.unexpose("s1")
    await port.unexpose("s1")
    inventory = await port.inventory()
    assert inventory.exposed_ports_in_use == 0
    assert "service" not in kinds_of(inventory.sessions, "s1")


async def test_expose_of_unknown_node_is_not_found(port: ClusterPort) -> None:
    with pytest.raises(NodeNotFound):
        await port.expose("s1", "never-made")


async def test_release_removes_everything_of_the_session_and_nothing_else(port: ClusterPort) -> None:
    for session_id in ("s1", "s2"):
        await make_session(port, session_id)
        await port.wire(SessionWiring(session=ref(session_id), controlplane=f"{session_id}-cp",
                                      workers=[f"{session_id}-w1"]))
        await port.expose(session_id, f"{session_id}-cp")
    await port.provision(spec("s1-cold-w2", WORKER, session=ref("s1")))
    await free_nodes(port, "pool-cp-spare")

    assert await port.release("s1") == 3
    assert await port.release("s1") == 0

    inventory = await port.inventory()
    assert sorted(n.node_id for n in inventory.nodes) == ["pool-cp-spare", "s2-cp", "s2-w1"]
    assert [s.session_id for s in inventory.sessions] == ["s2"]
    assert set(inventory.sessions[0].kinds) >= {"node", "networkpolicy", "service"}
    assert inventory.exposed_ports_in_use == 1
    for node_id in ("s1-cp", "s1-w1", "s1-cold-w2"):
        assert (await port.node_status(node_id)).phase == NodePhase.MISSING


# --- inventory ---------------------------------------------------------------------------------
async def test_inventory_counts_nodes_per_state_and_names_session_runs(port: ClusterPort) -> None:
    await free_nodes(port, "pool-cp-1", "pool-cp-2", "pool-cp-3")
    await port.provision(spec("pool-cp-booting"))
    await port.claim(want("s1", cp=2))
    await port.provision(spec("s2-cp", session=ref("s2")))

    inventory = await port.inventory()

    assert Counter(n.state for n in inventory.nodes) == {
        NodeState.CLAIMED: 3,
        NodeState.FREE: 1,
        NodeState.PROVISIONING: 1,
    }
    leftovers = {s.session_id: s for s in inventory.sessions}
    assert set(leftovers) == {"s1", "s2"}
    for session_id, found in leftovers.items():
        assert (found.workflow_id, found.run_id) == (ref(session_id).workflow_id, ref(session_id).run_id)
        assert "node" in found.kinds


async def test_inventory_summary_counts_per_class_image_and_state_including_what_was_just_provisioned(
    port: ClusterPort,
) -> None:
    assert (await port.inventory_summary()).vms == 0
    await free_nodes(port, "pool-cp-1", "pool-cp-2")
    await port.provision(spec("pool-w-1", WORKER))
    await port.claim(want("s1", cp=1))
    await port.provision(spec("cold-w", WORKER, session=ref("s1")))  # read-your-writes: counted at once
    summary = await port.inventory_summary()
    assert summary.vms == 4
    assert summary.memory_bytes == 2 * 1536 * 2**20 + 2 * 1126 * 2**20
    assert (summary.count(CP, NodeState.FREE), summary.count(CP, NodeState.CLAIMED)) == (1, 1)
    assert (summary.count(WORKER, NodeState.PROVISIONING), summary.count(WORKER, NodeState.CLAIMED)) == (1, 1)
    assert summary.count(image="127.0.0.1:5000/labrador/node:v1.31.2") == 4


async def test_usage_counts_count_what_the_inventory_holds_including_what_was_just_provisioned(
    port: ClusterPort,
) -> None:
    """The capacity broker's reading (every second while grants are in flight): the same counts as
    the inventory, without building it; sessions and nodes asked about but absent are left out."""
    assert isinstance(port, CountsUsage)  # both backends count without the inventory
    await free_nodes(port, "pool-cp-1", "pool-cp-2")
    await port.claim(want("s1", cp=1))
    await port.provision(spec("cold-w", WORKER, session=ref("s1")))  # read-your-writes: counted at once
    await port.provision(spec("s2-cp", session=ref("s2")))
    asked_sessions, asked_nodes = ["s1", "s2", "s-gone"], ["cold-w", "pool-cp-2", "never-made"]

    counts = await port.usage_counts(asked_sessions, asked_nodes)

    assert counts == count_usage(await port.inventory(), asked_sessions, asked_nodes)
    assert (counts.vms, counts.memory_bytes) == (4, 3 * 1536 * 2**20 + 1126 * 2**20)
    assert counts.sessions == {"s1": (2, 1536 * 2**20 + 1126 * 2**20), "s2": (1, 1536 * 2**20)}
    assert sorted(counts.nodes) == ["cold-w", "pool-cp-2"]
    await port.release("s1")
    after = await port.usage_counts(asked_sessions, asked_nodes)
    assert (after.vms, set(after.sessions), sorted(after.nodes)) == (2, {"s2"}, ["pool-cp-2"])
