"""PoolRefillWorkflow against the simulated cluster on the dev server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from activities.cluster_activities import ClusterActivities
from activities.pool_activities import PoolActivities
from cluster.models import ClaimRequest, ClaimWant, Inventory, NodeSpec, NodeState, SessionRef
from cluster.published_images import PublishedImage
from tests.pool.conftest import CLASSES, CP, WORKER, PoolBed
from workflows.models import ActivityName
from workflows.pool_models import (
    ClassSizing,
    PoolActivityName,
    PoolRefillInput,
    PoolRefillResult,
    PoolView,
    PoolViewInput,
)
from workflows.pool_refill import PoolRefillWorkflow

pytestmark = pytest.mark.timeout(60)


def fixed(cp: int, worker: int, **extra: object) -> PoolRefillInput:
    return PoolRefillInput(
        sizing={
            CP.name: ClassSizing(min_size=cp, max_size=cp),
            WORKER.name: ClassSizing(min_size=worker, max_size=worker),
        },
        **extra,  # type: ignore[arg-type]
    )


async def refill(client: Client, bed: PoolBed, input: PoolRefillInput) -> PoolRefillResult:
    return await client.execute_workflow(
        PoolRefillWorkflow.run, input, id=f"refill-{uuid.uuid4().hex[:8]}", task_queue=bed.task_queue,
        result_type=PoolRefillResult,
    )


async def free_nodes(bed: PoolBed, node_class: str) -> list[str]:
    inventory = await bed.sim.inventory()
    return sorted(n.node_id for n in inventory.nodes if n.node_class == node_class and n.state == NodeState.FREE)


async def test_refill_fills_each_class_to_its_target_and_is_stable(pool_bed: PoolBed) -> None:
    first = await refill(pool_bed.client, pool_bed, fixed(3, 2))
    assert (first.classes[CP.name].created, first.classes[WORKER.name].created) == (3, 2)
    assert len(await free_nodes(pool_bed, CP.name)) == 3
    assert len(await free_nodes(pool_bed, WORKER.name)) == 2
    before = await free_nodes(pool_bed, CP.name)

    second = await refill(pool_bed.client, pool_bed, fixed(3, 2))
    assert second.classes[CP.name].created == 0
    assert await free_nodes(pool_bed, CP.name) == before  # nothing churned


async def test_rollover_replaces_free_nodes_on_an_old_image(pool_bed: PoolBed) -> None:
    await refill(pool_bed.client, pool_bed, fixed(2, 1))
    old = await free_nodes(pool_bed, CP.name)
    new_image = "127.0.0.1:5000/cp@sha256:" + "a" * 64
    pool_bed.published.publish(PublishedImage(
        node_class=CP.name, reference=new_image, digest="sha256:" + "a" * 64, published_at=datetime.now(UTC),
    ))

    result = await refill(pool_bed.client, pool_bed, fixed(2, 1))

    assert result.classes[CP.name].deleted_stale == 2
    assert result.classes[WORKER.name].deleted_stale == 0
    inventory = await pool_bed.sim.inventory()
    cps = [n for n in inventory.nodes if n.node_class == CP.name]
    assert {n.image for n in cps} == {new_image}
    assert len(cps) == 2 and not set(old) & {n.node_id for n in cps}


async def test_overdue_provisioning_nodes_are_deleted(pool_bed: PoolBed) -> None:
    pool_bed.sim.boot_seconds = 10**6  # never ready
    pool_bed.clock.advance(-3600)  # created an hour ago
    await pool_bed.sim.provision(NodeSpec(
        node_id="stuck-1", node_class=CP.name, role=CP.role, image=CP.image, kubernetes_version="1.31.0",
        cpu_cores=1, memory="1536Mi", disk=CP.disk,
    ))
    pool_bed.clock.advance(3600)

    result = await refill(pool_bed.client, pool_bed, fixed(0, 0))

    assert result.classes[CP.name].deleted_overdue == 1
    assert (await pool_bed.sim.node_status("stuck-1")).phase == "missing"


async def test_a_node_claimed_between_inventory_and_delete_stays_with_its_session(pool_bed: PoolBed) -> None:
    """Rollover wants both free CP nodes gone, but a session claims one right after the refill's
    inventory (played by an inventory activity that claims once it has read): that node is not
    deleted, it is counted as claimed meanwhile, and the session still holds it."""
    await refill(pool_bed.client, pool_bed, fixed(2, 0))
    pool_bed.published.publish(PublishedImage(
        node_class=CP.name, reference="127.0.0.1:5000/cp@sha256:" + "b" * 64, digest="sha256:" + "b" * 64,
        published_at=datetime.now(UTC),
    ))
    racer = SessionRef(session_id="s-racer", workflow_id="wf-racer", run_id="run-racer")
    won: list[str] = []

    @activity.defn(name=ActivityName.INVENTORY)
    async def inventory_then_a_claim() -> Inventory:
        snapshot = await pool_bed.sim.inventory()
        if not won:
            claim = ClaimRequest(session=racer, wants=[ClaimWant(node_class=CP.name, count=1)])
            won.extend(n.node_id for n in (await pool_bed.sim.claim(claim)).nodes)
        return snapshot

    real = PoolActivities(pool_bed.sim, lambda: dict(CLASSES), pool_bed.published)

    @activity.defn(name=PoolActivityName.POOL_VIEW)
    async def view_then_a_claim(request: PoolViewInput) -> PoolView:  # the refill's look at the cluster today
        view = await real.pool_view(request)
        if not won:
            claim = ClaimRequest(session=racer, wants=[ClaimWant(node_class=CP.name, count=1)])
            won.extend(n.node_id for n in (await pool_bed.sim.claim(claim)).nodes)
        return view

    task_queue = f"race-{uuid.uuid4().hex[:8]}"
    cluster = [a for a in ClusterActivities(pool_bed.sim).all() if a.__name__ != "inventory"]
    pool = [a for a in real.all() if a.__name__ != "pool_view"]
    async with Worker(pool_bed.client, task_queue=task_queue, workflows=[PoolRefillWorkflow],
                      activities=[*cluster, *pool, inventory_then_a_claim, view_then_a_claim]):
        result = await pool_bed.client.execute_workflow(
            PoolRefillWorkflow.run, fixed(2, 0, collect_leaks=False, use_capacity_broker=False),
            id=f"refill-{uuid.uuid4().hex[:8]}", task_queue=task_queue, result_type=PoolRefillResult,
        )

    assert len(won) == 1
    report = result.classes[CP.name]
    assert (report.deleted_stale, report.claimed_meanwhile) == (1, 1)
    held = [n for n in (await pool_bed.sim.inventory()).nodes if n.node_id == won[0]]
    assert len(held) == 1 and held[0].state == NodeState.CLAIMED
    assert held[0].session is not None and held[0].session.session_id == "s-racer"


async def test_capacity_cap_limits_creation(pool_bed: PoolBed) -> None:
    await refill(pool_bed.client, pool_bed, fixed(2, 0))
    session = SessionRef(session_id="s-held", workflow_id="wf", run_id="run")
    await pool_bed.sim.claim(ClaimRequest(session=session, wants=[ClaimWant(node_class=CP.name, count=2)]))

    result = await refill(pool_bed.client, pool_bed, fixed(3, 3, max_vms=5, collect_leaks=False))

    created = result.classes[CP.name].created + result.classes[WORKER.name].created
    assert created == 3  # 2 claimed + 3 new = the cap of 5
    assert result.capped_reason and "capacity cap" in result.capped_reason
    assert len((await pool_bed.sim.inventory()).nodes) == 5


async def test_drained_class_loses_its_free_nodes_and_is_not_refilled(pool_bed: PoolBed) -> None:
    await refill(pool_bed.client, pool_bed, fixed(2, 2))

    result = await refill(pool_bed.client, pool_bed, fixed(2, 2, drained=[WORKER.name]))

    assert result.classes[WORKER.name].deleted_drained == 2
    assert result.classes[WORKER.name].target == 0
    assert await free_nodes(pool_bed, WORKER.name) == []
    assert len(await free_nodes(pool_bed, CP.name)) == 2


async def test_failed_boot_is_deleted_and_counted(pool_bed: PoolBed) -> None:
    from cluster.simulated.faults import FaultPlan, ImagePullError

    pool_bed.sim.faults = FaultPlan(image_pull_errors=[ImagePullError(images="worker")])
    result = await refill(pool_bed.client, pool_bed, fixed(1, 2))
    assert result.classes[WORKER.name].failed == 2
    assert await free_nodes(pool_bed, WORKER.name) == []
    assert len(await free_nodes(pool_bed, CP.name)) == 1


async def test_session_terminated_without_cleanup_is_collected_by_the_next_refill(pool_bed: PoolBed) -> None:
    from tests.pool.conftest import IdleSession

    await refill(pool_bed.client, pool_bed, fixed(3, 1))
    handles = {}
    for name in ("dead", "alive"):
        handle = await pool_bed.client.start_workflow(
            IdleSession.run, id=f"lab-session/{name}-{uuid.uuid4().hex[:6]}", task_queue=pool_bed.task_queue
        )
        ref = SessionRef(session_id=f"s-{name}", workflow_id=handle.id, run_id=handle.result_run_id or "")
        claim = await pool_bed.sim.claim(ClaimRequest(session=ref, wants=[ClaimWant(node_class=CP.name, count=1)]))
        cold = NodeSpec(
            node_id=f"cold-{name}", node_class=WORKER.name, role=WORKER.role, image=WORKER.image,
            kubernetes_version="1.31.0", cpu_cores=1, memory="1126Mi", disk=WORKER.disk, session=ref,
        )
        await pool_bed.sim.provision(cold)
        from cluster.models import SessionWiring

        controlplane = claim.nodes[0].node_id
        await pool_bed.sim.wire(SessionWiring(session=ref, controlplane=controlplane, workers=[cold.node_id]))
        await pool_bed.sim.expose(ref.session_id, controlplane)
        handles[name] = handle
    await handles["dead"].terminate("crashed without cleanup")

    result = await refill(pool_bed.client, pool_bed, fixed(3, 1))

    assert result.leaks.session_ids == ["s-dead"]
    assert (result.leaks.sessions, result.leaks.nodes) == (1, 2)
    assert (result.leaks.services, result.leaks.networkpolicies) == (1, 1)
    inventory = await pool_bed.sim.inventory()
    holders = {n.session.session_id for n in inventory.nodes if n.session}
    assert holders == {"s-alive"}
    assert {s.session_id for s in inventory.sessions} == {"s-alive"}
    assert inventory.exposed_ports_in_use == 1
    await handles["alive"].terminate("test over")
