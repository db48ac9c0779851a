"""PoolRefillWorkflow: one reconciliation of the warm pool, run every minute by a Temporal Schedule.

The story of one run:

    plan (node classes + effective images) ─► inventory ─► collect leaks of ended sessions
      ─► per class: delete stale-image, overdue, drained and surplus nodes
      ─► create the missing nodes up to the demand-aware target, within the global capacity cap
         (and a reservation from the capacity broker, so queued sessions go first)
      ─► bring every provisioning node up (bounded parallelism): wait ready, mark free
      ─► result (counts per class, leaks, and the demand estimate the next run starts from)

Deterministic: activities by name, node IDs from workflow.uuid4(), time from workflow.now().
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    # Not `from workflows import pool_policy`: inside the sandbox that form loads a second copy of the
    # module (its ClassDemand would not be the one PoolRefillResult validates against).
    import workflows.pool_policy as pool_policy
    import workflows.pool_sizing as pool_sizing
    from cluster.models import Inventory, InventorySummary, NodeRecord, NodeSpec, NodeState, SessionRef, summarize
    from cluster.naming import dns_label
    from labs.models import NodeClass
    from workflows.models import ActivityName, NodeRef, ProvisionInput, WaitReadyInput
    from workflows.pool_leftovers import sessions_in
    from workflows.pool_models import (
        CapacityActivityName,
        CapacityLimits,
        CapacityRelease,
        ClassReport,
        CollectedSession,
        CollectSessionInput,
        EndedLeftover,
        EndedSessions,
        EndedSessionsInput,
        LeakReport,
        PoolActivityName,
        PoolNodeHold,
        PoolPlan,
        PoolPlanInput,
        PoolRefillInput,
        PoolRefillMemory,
        PoolRefillResult,
        PoolReservation,
        PoolReservationResult,
        PoolView,
        PoolViewInput,
        UnclaimedNodeDeletion,
    )
    from workflows.pool_policy import ClassDemand

SHORT = timedelta(seconds=30)
# workflow.patched ID: runs started before delete-if-unclaimed replay with the plain DELETE_NODE.
DELETE_IF_UNCLAIMED_PATCH = "pool-delete-if-unclaimed"
# workflow.patched ID: one `pool_view` activity instead of the whole inventory (which grows with the labs).
POOL_VIEW_PATCH = "pool-view"
# workflow.patched ID: the refill releases its capacity reservation when its nodes exist (no expiry).
RESERVATION_HOLDER_PATCH = "pool-reservation-holder"
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=5)


def pool_node_id(node_class: str, unique: str) -> str:
    """A pool node ID: short, DNS-safe, unique per refill run (uuid4 of the workflow is replay-safe)."""
    return dns_label("p", node_class[:20], unique[:10], max_len=40)


def allocate(wants: dict[str, int], memory: dict[str, int], room_vms: int, room_memory: int) -> dict[str, int]:
    """Share the remaining capacity between classes one node at a time (no class starves the others)."""
    granted = dict.fromkeys(wants, 0)
    progress = True
    while progress:
        progress = False
        for name in sorted(wants):
            if granted[name] < wants[name] and room_vms >= 1 and room_memory >= memory[name]:
                granted[name] += 1
                room_vms -= 1
                room_memory -= memory[name]
                progress = True
    return granted


@workflow.defn
class PoolRefillWorkflow:
    def __init__(self) -> None:
        self._semaphore = asyncio.Semaphore(5)
        self._left: dict[str, list[str]] = {}  # pool nodes left free, per class (the next run's memory)

    @workflow.run
    async def run(self, input: PoolRefillInput) -> PoolRefillResult:
        started = workflow.now()
        self._semaphore = asyncio.Semaphore(input.parallelism)
        last = self._last_result() or input.previous
        plan: PoolPlan = await workflow.execute_activity(
            PoolActivityName.POOL_PLAN, PoolPlanInput(classes=input.pooled_classes),
            result_type=PoolPlan, start_to_close_timeout=SHORT, retry_policy=RETRY,
        )
        leaks = LeakReport()
        new_claims: dict[str, int] | None = None
        observed_at: datetime | None = None
        if workflow.patched(POOL_VIEW_PATCH):
            # The cluster as the pool needs it: unclaimed nodes + counts (no list that grows with labs).
            view: PoolView = await workflow.execute_activity(
                PoolActivityName.POOL_VIEW, PoolViewInput(previous=last, collect_leaks=input.collect_leaks),
                result_type=PoolView, start_to_close_timeout=timedelta(minutes=2), retry_policy=RETRY,
            )
            inventory = Inventory(nodes=view.pool_nodes)
            summary = view.summary
            new_claims, observed_at = view.new_claims, view.observed_at
            if view.ended:
                leaks = await self._collect_ended(view.ended)
        else:
            inventory = await self._inventory()
            if input.collect_leaks:
                leaks = await self._collect_leaks(inventory)
                if leaks.sessions:
                    inventory = await self._inventory()
            summary = summarize(inventory)

        reports: dict[str, ClassReport] = {}
        demand: dict[str, ClassDemand] = {}
        claimed_ids: dict[str, list[str]] = {}
        deletions: list[tuple[str, str, str]] = []  # (class, node ID, counter)
        keep: dict[str, list[NodeRecord]] = {}
        wants: dict[str, int] = {}
        now = workflow.now()
        for name, node_class in sorted(plan.node_classes.items()):
            nodes = [n for n in inventory.nodes if n.node_class == name]
            free = [n for n in nodes if n.state == NodeState.FREE]
            provisioning = [n for n in nodes if n.state == NodeState.PROVISIONING]
            claimed_count = summary.count(name, NodeState.CLAIMED)
            drained = name in input.drained

            # Demand: this interval's claims (the pool view counts them; before it, claimed node IDs
            # the previous run had not seen).
            sizing = pool_sizing.resolve(input, node_class, name, now)
            params = sizing.params
            state = last.demand.get(name, ClassDemand()) if last else ClassDemand()
            if new_claims is not None:
                claims = new_claims.get(name, 0)
            else:
                claimed_ids[name] = sorted(n.node_id for n in nodes if n.state == NodeState.CLAIMED)
                seen = set(last.claimed_node_ids.get(name, [])) if last else set(claimed_ids[name])
                claims = len(set(claimed_ids[name]) - seen)
            state = pool_policy.observe(state, now, claims, params)
            demand[name] = state
            target = 0 if drained else pool_policy.target(state, now, params)
            reason = pool_sizing.target_reason(target, pool_policy.wanted(state, now, params), sizing, drained)

            stale = [n for n in free + provisioning if n.image != node_class.image]
            overdue = [
                n for n in provisioning
                if n not in stale and now - n.created_at > input.provisioning_overdue
            ]
            warm = sorted(
                (n for n in free + provisioning if n not in stale and n not in overdue),
                key=lambda n: (n.state == NodeState.FREE, n.created_at),  # provisioning first, then oldest
            )
            deletions += [(name, n.node_id, "deleted_stale") for n in stale]
            deletions += [(name, n.node_id, "deleted_overdue") for n in overdue]
            if drained:
                deletions += [(name, n.node_id, "deleted_drained") for n in warm]
                warm = []
            elif len(warm) > target:
                # Shrink: drop the surplus free nodes, newest last so the oldest go first.
                surplus = [n for n in warm if n.state == NodeState.FREE][: len(warm) - target]
                deletions += [(name, n.node_id, "deleted_surplus") for n in surplus]
                warm = [n for n in warm if n not in surplus]
            keep[name] = warm
            wants[name] = max(0, target - len(warm))
            reports[name] = ClassReport(
                node_class=name, target=target, target_reason=reason, min_size=params.min_size,
                max_size=params.max_size, claimed=claimed_count,
                stale=len([n for n in stale if n.state == NodeState.FREE]), drained=drained,
            )

        counters: dict[str, dict[str, int]] = {name: {} for name in reports}
        # Unconditional deletes would race with claims: a session may take a free node between our
        # inventory and the delete. Such a node stays with the session and is counted apart.
        deleted: list[bool] = await self._bounded(
            [self._delete_unclaimed(node_id) for _, node_id, _ in deletions]
        )
        for (name, _, counter), gone in zip(deletions, deleted, strict=True):
            counter = counter if gone else "claimed_meanwhile"
            counters[name][counter] = counters[name].get(counter, 0) + 1
        deletions = [d for d, gone in zip(deletions, deleted, strict=True) if gone]

        granted, capped_reason = await self._capacity(
            input, summary, inventory, deletions, plan.node_classes, wants
        )
        try:
            result = await self._finish(
                input, started, plan, leaks, reports, demand, claimed_ids, keep, wants, counters, granted,
                capped_reason,
            )
            if observed_at is None:
                return result
            return result.model_copy(update={"observed_at": observed_at, "pool_node_ids": self._left})
        finally:
            if granted and input.use_capacity_broker and workflow.patched(RESERVATION_HOLDER_PATCH):
                # The nodes exist now (or never will): the broker counts them from its next cluster
                # reading instead of the reservation.
                done = CapacityRelease(session=self._holder(), reason="refill done")
                await workflow.execute_activity(
                    CapacityActivityName.RELEASE_CAPACITY, done, start_to_close_timeout=SHORT, retry_policy=RETRY,
                )

    def _holder(self) -> SessionRef:
        info = workflow.info()
        return SessionRef(session_id="pool-refill", workflow_id=info.workflow_id, run_id=info.run_id)

    async def _finish(
        self, input: PoolRefillInput, started: datetime, plan: PoolPlan, leaks: LeakReport,
        reports: dict[str, ClassReport], demand: dict[str, ClassDemand], claimed_ids: dict[str, list[str]],
        keep: dict[str, list[NodeRecord]], wants: dict[str, int], counters: dict[str, dict[str, int]],
        granted: dict[str, list[str]], capped_reason: str | None,
    ) -> PoolRefillResult:

        # Bring up: adopt the provisioning nodes left by earlier runs, create the granted new ones.
        outcomes: dict[str, list[bool]] = {name: [] for name in reports}
        boots: dict[str, list[float]] = {name: [] for name in reports}

        async def bring_up(name: str, node_id: str, create: NodeClass | None, since: datetime | None) -> None:
            ok, seconds = await self._bring_up(node_id, create, since or workflow.now(), input.provisioning_overdue)
            outcomes[name].append(ok)
            if ok:
                self._left.setdefault(name, []).append(node_id)
            if ok and create is not None:
                boots[name].append(seconds)

        ups: list[Awaitable[None]] = [
            bring_up(name, node.node_id, None, node.created_at)
            for name, warm in keep.items() for node in warm if node.state == NodeState.PROVISIONING
        ]
        ups += [
            bring_up(name, node_id, plan.node_classes[name], None)
            for name, node_ids in granted.items() for node_id in node_ids
        ]
        await self._bounded(ups)

        for name, warm in keep.items():
            self._left[name] = sorted(
                {n.node_id for n in warm if n.state == NodeState.FREE} | set(self._left.get(name, []))
            )
        for name, report in reports.items():
            for seconds in boots[name]:
                demand[name] = pool_policy.observe_boot(demand[name], seconds)
            free_now = len([n for n in keep[name] if n.state == NodeState.FREE]) + outcomes[name].count(True)
            reports[name] = report.model_copy(
                update={
                    **counters[name],
                    "created": len(granted.get(name, [])),
                    "became_ready": outcomes[name].count(True),
                    "failed": outcomes[name].count(False),
                    "free": free_now,
                    "capped": len(granted.get(name, [])) < wants[name],
                }
            )
        return PoolRefillResult(
            started_at=started, finished_at=workflow.now(), classes=reports, leaks=leaks,
            capped_reason=capped_reason, demand=demand, claimed_node_ids=claimed_ids,
        )

    # --- steps ------------------------------------------------------------------------------------

    @staticmethod
    def _last_result() -> PoolRefillMemory | None:
        try:
            result = workflow.get_last_completion_result(PoolRefillResult)
        except Exception:  # an older, incompatible result: start the estimate afresh
            return None
        if not isinstance(result, PoolRefillResult):
            return None
        return PoolRefillMemory(
            demand=result.demand, claimed_node_ids=result.claimed_node_ids, pool_node_ids=result.pool_node_ids,
            observed_at=result.observed_at,
        )

    async def _inventory(self) -> Inventory:
        return await workflow.execute_activity(
            ActivityName.INVENTORY, result_type=Inventory, start_to_close_timeout=SHORT, retry_policy=RETRY
        )

    async def _bounded(self, coroutines: list[Awaitable[Any]]) -> list[Any]:
        async def one(coroutine: Awaitable[Any]) -> Any:
            async with self._semaphore:
                return await coroutine

        return list(await asyncio.gather(*(one(c) for c in coroutines)))

    async def _delete_unclaimed(self, node_id: str) -> bool:
        """Delete a pool node unless a session claimed it meanwhile; True when it is gone."""
        if not workflow.patched(DELETE_IF_UNCLAIMED_PATCH):
            await workflow.execute_activity(
                ActivityName.DELETE_NODE, NodeRef(node_id=node_id), start_to_close_timeout=timedelta(minutes=2),
                retry_policy=RETRY,
            )
            return True
        result: UnclaimedNodeDeletion = await workflow.execute_activity(
            PoolActivityName.DELETE_UNCLAIMED_NODE, NodeRef(node_id=node_id), result_type=UnclaimedNodeDeletion,
            start_to_close_timeout=timedelta(minutes=2), retry_policy=RETRY,
        )
        return result.deleted

    async def _collect_ended(self, ended: list[EndedLeftover]) -> LeakReport:
        collected: list[CollectedSession] = await self._bounded([
            workflow.execute_activity(
                PoolActivityName.COLLECT_SESSION, CollectSessionInput(session_id=e.session_id),
                result_type=CollectedSession, start_to_close_timeout=timedelta(minutes=2), retry_policy=RETRY,
            )
            for e in ended
        ])
        return LeakReport(
            sessions=len(ended), nodes=sum(c.nodes for c in collected),
            services=sum("service" in e.kinds for e in ended),
            networkpolicies=sum("networkpolicy" in e.kinds for e in ended),
            namespaces=sum("namespace" in e.kinds and "node" not in e.kinds for e in ended),
            session_ids=[e.session_id for e in ended],
        )

    async def _collect_leaks(self, inventory: Inventory) -> LeakReport:
        refs, kinds = sessions_in(inventory)
        if not refs:
            return LeakReport()
        ended: EndedSessions = await workflow.execute_activity(
            PoolActivityName.ENDED_SESSIONS, EndedSessionsInput(sessions=sorted(refs.values(), key=str)),
            result_type=EndedSessions, start_to_close_timeout=timedelta(minutes=1), retry_policy=RETRY,
        )
        collected: list[CollectedSession] = await self._bounded([
            workflow.execute_activity(
                PoolActivityName.COLLECT_SESSION, CollectSessionInput(session_id=session_id),
                result_type=CollectedSession, start_to_close_timeout=timedelta(minutes=2), retry_policy=RETRY,
            )
            for session_id in ended.session_ids
        ])
        ended_kinds = [kinds.get(s, set()) for s in ended.session_ids]
        return LeakReport(
            sessions=len(ended.session_ids),
            nodes=sum(c.nodes for c in collected),
            services=sum("service" in k for k in ended_kinds),
            networkpolicies=sum("networkpolicy" in k for k in ended_kinds),
            # A namespace left without its VM (the VM went first, the namespace stayed).
            namespaces=sum("namespace" in k and "node" not in k for k in ended_kinds),
            session_ids=list(ended.session_ids),
        )

    async def _capacity(
        self,
        input: PoolRefillInput,
        summary: InventorySummary,
        inventory: Inventory,
        deletions: list[tuple[str, str, str]],
        classes: dict[str, NodeClass],
        wants: dict[str, int],
    ) -> tuple[dict[str, list[str]], str | None]:
        """Node IDs to create per class: within the global cap, then confirmed by the broker."""
        if not any(wants.values()):
            return {}, None
        deleted = {node_id for _, node_id, _ in deletions}
        gone = [n for n in inventory.nodes if n.node_id in deleted]
        remaining_vms = summary.vms - len(gone)
        room_vms = input.max_vms - remaining_vms
        room_memory = input.max_memory_bytes - (summary.memory_bytes - sum(n.memory_bytes for n in gone))
        memory = {name: classes[name].memory_bytes for name in wants}
        shares = allocate(wants, memory, room_vms, room_memory)
        reason = None
        if any(shares[n] < wants[n] for n in wants):
            reason = f"capacity cap: {remaining_vms}/{input.max_vms} VMs, {room_memory} bytes of memory left"
        planned = {
            name: [pool_node_id(name, workflow.uuid4().hex) for _ in range(count)]
            for name, count in shares.items() if count
        }
        if not planned or not input.use_capacity_broker:
            return planned, reason
        reservation = PoolReservation(
            nodes=[PoolNodeHold(node_id=i, memory_bytes=memory[name]) for name, ids in planned.items() for i in ids],
            limits=CapacityLimits(max_vms=input.max_vms, max_memory_bytes=input.max_memory_bytes),
            holder=self._holder(),  # kept until this run releases it (or ends): never expires before its nodes exist
        )
        result: PoolReservationResult = await workflow.execute_activity(
            CapacityActivityName.RESERVE_POOL_CAPACITY, reservation, result_type=PoolReservationResult,
            start_to_close_timeout=timedelta(minutes=1), retry_policy=RETRY,
        )
        allowed = set(result.granted)
        granted = {name: [i for i in ids if i in allowed] for name, ids in planned.items()}
        if len(allowed) < len(reservation.nodes):
            reason = result.reason or reason
        return granted, reason

    async def _bring_up(
        self, node_id: str, node_class: NodeClass | None, since: datetime, overdue: timedelta
    ) -> tuple[bool, float]:
        """Provision (when `node_class` is given), wait ready, mark free. Failure deletes the node."""
        try:
            if node_class is not None:
                spec = NodeSpec(
                    node_id=node_id, node_class=node_class.name, role=node_class.role, image=node_class.image,
                    kubernetes_version=node_class.kubernetes_version, cpu_cores=node_class.cpu_cores,
                    memory=node_class.effective_memory, disk=node_class.disk,
                )
                await workflow.execute_activity(
                    ActivityName.PROVISION_NODE, ProvisionInput(spec=spec), start_to_close_timeout=timedelta(minutes=2),
                    retry_policy=RETRY,
                )
            remaining = max(overdue - (workflow.now() - since), timedelta(seconds=5))
            await workflow.execute_activity(
                ActivityName.WAIT_NODE_READY, WaitReadyInput(node_id=node_id, timeout=remaining),
                start_to_close_timeout=remaining + timedelta(seconds=30), heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
            await workflow.execute_activity(
                ActivityName.MARK_NODE_FREE, NodeRef(node_id=node_id), start_to_close_timeout=SHORT, retry_policy=RETRY,
            )
        except ActivityError as error:
            workflow.logger.warning("pool node %s did not come up: %s", node_id, error.cause or error)
            await self._delete_unclaimed(node_id)
            return False, 0.0
        return True, (workflow.now() - since).total_seconds()
