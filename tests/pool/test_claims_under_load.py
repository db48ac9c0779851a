"""Claims under load: 50 concurrent claims against 20 free nodes take the warm ones first, no node twice.

`ClaimingSession` (tests/pool/conftest.py) is the claim step of a lab session: the same activities
(CLAIM_NODES, then PROVISION_NODE with the session set) against the simulated cluster.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest

from cluster.models import NodeState
from tests.pool.conftest import CP, ClaimingSession, PoolBed
from workflows.pool_models import ClassSizing, PoolRefillInput, PoolRefillResult
from workflows.pool_refill import PoolRefillWorkflow

pytestmark = pytest.mark.timeout(60)


async def fill_pool(bed: PoolBed, count: int) -> None:
    result = await bed.client.execute_workflow(
        PoolRefillWorkflow.run,
        PoolRefillInput(sizing={CP.name: ClassSizing(min_size=count, max_size=count)},
                        default_sizing=ClassSizing(min_size=0, max_size=0), parallelism=10),
        id=f"refill-{uuid.uuid4().hex[:6]}", task_queue=bed.task_queue, result_type=PoolRefillResult,
    )
    assert result.classes[CP.name].free == count


async def test_fifty_concurrent_claims_take_the_twenty_warm_nodes_and_cold_provision_thirty(
    pool_bed: PoolBed,
) -> None:
    await fill_pool(pool_bed, 20)
    run = uuid.uuid4().hex[:4]
    results = await asyncio.gather(*(
        pool_bed.client.execute_workflow(
            ClaimingSession.run, 1, id=f"lab-session/load-{run}-{i}", task_queue=pool_bed.task_queue,
            result_type=list[tuple[str, bool]],
        )
        for i in range(50)
    ))
    nodes = [node for result in results for node in result]
    assert len(nodes) == 50
    assert (sum(warm for _, warm in nodes), sum(not warm for _, warm in nodes)) == (20, 30)
    assert len({node_id for node_id, _ in nodes}) == 50  # no node in two sessions
    inventory = await pool_bed.sim.inventory()
    holders = Counter(n.session.session_id for n in inventory.nodes if n.session)
    assert len(holders) == 50 and set(holders.values()) == {1}
    assert not [n for n in inventory.nodes if n.state == NodeState.FREE]
