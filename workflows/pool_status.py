"""PoolStatusWorkflow: a read-only snapshot of the pool for `labrador pool status`.

A short workflow (two activities) so the CLI needs only Temporal, never cluster credentials.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from cluster.models import Inventory, InventorySummary, NodeState
    from cluster.models import summarize as counts
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
SUMMARY_PATCH = "pool-status-summary"


def summarize(plan: PoolPlan, inventory: InventorySummary, request: PoolStatusInput) -> PoolStatus:
    """Per class: free (current image), provisioning, claimed, stale (free on an old image), target."""
    classes: dict[str, ClassStatus] = {}
    names = sorted(set(plan.node_classes) | {g.node_class for g in inventory.groups})
    for name in names:
        node_class = plan.node_classes.get(name)
        image = node_class.image if node_class else ""
        free = inventory.count(name, NodeState.FREE)
        current = inventory.count(name, NodeState.FREE, image)
        classes[name] = ClassStatus(
            node_class=name,
            image=image,
            free=current,
            stale=free - current,
            provisioning=inventory.count(name, NodeState.PROVISIONING),
            claimed=inventory.count(name, NodeState.CLAIMED),
            target=request.targets.get(name),
            drained=name in request.refill.drained,
        )
    return PoolStatus(
        classes=classes,
        total_vms=inventory.vms,
        total_memory_bytes=inventory.memory_bytes,
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
        if workflow.patched(SUMMARY_PATCH):  # counts only: the node list grows with the cluster
            summary: InventorySummary = await workflow.execute_activity(
                ActivityName.INVENTORY_SUMMARY, result_type=InventorySummary,
                start_to_close_timeout=timedelta(seconds=30), retry_policy=RETRY,
            )
            return summarize(plan, summary, request)
        inventory: Inventory = await workflow.execute_activity(
            ActivityName.INVENTORY, result_type=Inventory, start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RETRY,
        )
        return summarize(plan, counts(inventory), request)
