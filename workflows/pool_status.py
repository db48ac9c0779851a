"""PoolStatusWorkflow: a read-only snapshot of the pool for `labrador pool status`.

A short workflow (two activities) so the CLI needs only Temporal, never cluster credentials.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from cluster.models import Inventory, NodeState
    from workflows.models import ActivityName
    from workflows.pool_models import (
        ClassStatus,
        PoolActivityName,
        PoolPlan,
        PoolPlanInput,
        PoolStatus,
        PoolStatusInput,
    )

RETRY = RetryPolicy(maximum_attempts=3)


def summarize(plan: PoolPlan, inventory: Inventory, request: PoolStatusInput) -> PoolStatus:
    """Per class: free (current image), provisioning, claimed, stale (free on an old image), target."""
    classes: dict[str, ClassStatus] = {}
    names = sorted(set(plan.node_classes) | {n.node_class for n in inventory.nodes})
    for name in names:
        node_class = plan.node_classes.get(name)
        nodes = [n for n in inventory.nodes if n.node_class == name]
        image = node_class.image if node_class else ""
        free = [n for n in nodes if n.state == NodeState.FREE]
        classes[name] = ClassStatus(
            node_class=name,
            image=image,
            free=len([n for n in free if n.image == image]),
            stale=len([n for n in free if n.image != image]),
            provisioning=len([n for n in nodes if n.state == NodeState.PROVISIONING]),
            claimed=len([n for n in nodes if n.state == NodeState.CLAIMED]),
            target=request.targets.get(name),
            drained=name in request.refill.drained,
        )
    return PoolStatus(
        classes=classes,
        total_vms=len(inventory.nodes),
        total_memory_bytes=sum(n.memory_bytes for n in inventory.nodes),
        max_vms=request.refill.max_vms,
        max_memory_bytes=request.refill.max_memory_bytes,
        exposed_ports_in_use=inventory.exposed_ports_in_use,
        exposed_ports_capacity=inventory.exposed_ports_capacity,
    )


@workflow.defn
class PoolStatusWorkflow:
    @workflow.run
    async def run(self, request: PoolStatusInput) -> PoolStatus:
        plan: PoolPlan = await workflow.execute_activity(
            PoolActivityName.POOL_PLAN, PoolPlanInput(classes=request.refill.pooled_classes),
            result_type=PoolPlan, start_to_close_timeout=timedelta(seconds=30), retry_policy=RETRY,
        )
        inventory: Inventory = await workflow.execute_activity(
            ActivityName.INVENTORY, result_type=Inventory, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RETRY,
        )
        return summarize(plan, inventory, request)
