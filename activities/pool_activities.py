"""Activities of the warm pool: the plan (classes + effective images), leak collection, broker calls.

Node creation, readiness, mark-free and deletion are the cluster activities
(activities/cluster_activities.py); these add what only the pool needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.client import WorkflowExecutionStatus as Status
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.cluster_activities import map_port_errors
from cluster.models import Inventory, NodeState, count_usage, summarize
from cluster.port import ClusterPort, ClusterUnavailable, CountsUsage, PermanentClusterError
from cluster.published_images import PublishedImages, with_effective_images
from labs.models import NodeClass
from workflows.capacity.models import (
    CAPACITY_BROKER_WORKFLOW,
    BrokerSettings,
    BrokerState,
    CapacityActivityName,
    CapacityLimits,
    CapacityNotice,
    CapacityRelease,
    CapacityRequest,
    CapacityUsage,
    CapacityUsageInput,
    PoolReservation,
    PoolReservationResult,
    SessionPresence,
    capacity_broker_id,
)
from workflows.models import NodeRef
from workflows.pool_leftovers import sessions_in
from workflows.pool_models import (
    CollectedSession,
    CollectSessionInput,
    EndedLeftover,
    EndedSessions,
    EndedSessionsInput,
    PoolActivityName,
    PoolPlan,
    PoolPlanInput,
    PoolRefillMemory,
    PoolView,
    PoolViewInput,
    SessionRunRef,
    UnclaimedNodeDeletion,
)

# The session workflow's type name (workflows.lab_session.WORKFLOW_NAME; not imported: activities stay
# off the workflow modules).
LAB_SESSION_WORKFLOW = "LabSession"


async def run_is_running(client: Client, ref: SessionRunRef) -> bool:
    """Is the exact run that holds the session still running? Unknown owner or run: not running."""
    if not ref.workflow_id or not ref.run_id:
        return False
    try:
        description = await client.get_workflow_handle(ref.workflow_id, run_id=ref.run_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    if description.status == Status.RUNNING:
        return True
    if description.status == Status.CONTINUED_AS_NEW:
        # The session lives on in a newer run (which carries its nodes over).
        latest = await client.get_workflow_handle(ref.workflow_id).describe()
        return latest.status == Status.RUNNING
    return False


def new_claims(inventory: Inventory, previous: PoolRefillMemory | None) -> dict[str, int]:
    """Claims per class since the previous refill, from what it left: its pool nodes now claimed or
    gone (claimed and released in between), plus nodes created claimed (cold) since it looked.
    Without a previous look: nothing (the estimate starts afresh)."""
    claims: dict[str, int] = {}
    if previous is None:
        return claims
    if previous.observed_at is None:  # a refill before the pool view: it remembered claimed node IDs
        for node in inventory.nodes:
            seen = previous.claimed_node_ids.get(node.node_class)
            if node.state == NodeState.CLAIMED and seen is not None and node.node_id not in seen:
                claims[node.node_class] = claims.get(node.node_class, 0) + 1
        return claims
    left = {node_id: cls for cls, ids in previous.pool_node_ids.items() for node_id in ids}
    present = set()
    for node in inventory.nodes:
        present.add(node.node_id)
        if node.state == NodeState.CLAIMED and (node.node_id in left or node.created_at > previous.observed_at):
            claims[node.node_class] = claims.get(node.node_class, 0) + 1
    for node_id, cls in left.items():
        if node_id not in present:
            claims[cls] = claims.get(cls, 0) + 1
    return claims


class PoolActivities:
    def __init__(
        self,
        port: ClusterPort,
        node_classes: Callable[[], dict[str, NodeClass]],
        published: PublishedImages,
        client: Client | None = None,
        broker_recheck: timedelta = timedelta(seconds=30),
        broker_settings: BrokerSettings | None = None,
    ) -> None:
        self.port = port
        self.node_classes = node_classes
        self.published = published
        self._client = client
        self.broker_settings = broker_settings or BrokerSettings(recheck=broker_recheck, liveness_every=broker_recheck)

    def client(self) -> Client:
        return self._client or activity.client()

    @activity.defn(name=PoolActivityName.POOL_PLAN)
    async def pool_plan(self, request: PoolPlanInput) -> PoolPlan:
        try:
            # Off the event loop: the catalog is files from strangers (bounded, but parsing is work).
            classes = await asyncio.to_thread(self.node_classes)
        except ValueError as error:  # labs.loader.CatalogError: a broken catalog needs a person, not retries
            raise ApplicationError(f"pool plan: the catalog does not load: {error}", non_retryable=True) from error
        if request.classes is not None:
            unknown = sorted(set(request.classes) - set(classes))
            if unknown:
                raise ApplicationError(
                    f"pooled_classes: {unknown} are not node classes of the catalog ({sorted(classes)})",
                    non_retryable=True,
                )
            classes = {name: classes[name] for name in request.classes}
        return PoolPlan(node_classes=with_effective_images(classes, self.published.all()))

    @activity.defn(name=PoolActivityName.POOL_VIEW)
    @map_port_errors
    async def pool_view(self, request: PoolViewInput) -> PoolView:
        """The refill's look at the cluster: the node list stays here (it grows with the cluster)."""
        inventory = await self.port.inventory()
        observed_at = datetime.now(UTC)
        ended: list[EndedLeftover] = []
        if request.collect_leaks:
            ended = await self._ended_leftovers(inventory, request.leak_limit)
        return PoolView(
            pool_nodes=[n for n in inventory.nodes if n.state != NodeState.CLAIMED],
            summary=summarize(inventory), new_claims=new_claims(inventory, request.previous), ended=ended,
            observed_at=observed_at,
        )

    async def _ended_leftovers(self, inventory: Inventory, limit: int) -> list[EndedLeftover]:
        refs, kinds = sessions_in(inventory)
        ended = sorted(await self._ended(list(refs.values())))[:limit]
        return [EndedLeftover(session_id=sid, kinds=sorted(kinds.get(sid, set()))) for sid in ended]

    @activity.defn(name=PoolActivityName.ENDED_SESSIONS)
    async def ended_sessions(self, request: EndedSessionsInput) -> EndedSessions:
        """One visibility query for the running lab sessions (heartbeating per page) instead of one
        describe() per claimed session. Visibility lags: a run it does not list yet (just started) is
        confirmed with describe() before it counts as ended, so only the candidates are described."""
        return EndedSessions(session_ids=await self._ended(request.sessions))

    async def _ended(self, refs: list[SessionRunRef]) -> list[str]:
        client = self.client()
        running: set[tuple[str, str]] = set()
        listed = 0
        async for execution in client.list_workflows(
            f"WorkflowType = '{LAB_SESSION_WORKFLOW}' AND ExecutionStatus = 'Running'", page_size=1000
        ):
            running.add((execution.id, execution.run_id))
            listed += 1
            if listed % 1000 == 0:
                activity.heartbeat(listed)
        candidates = [ref for ref in refs if (ref.workflow_id or "", ref.run_id or "") not in running]
        return [ref.session_id for ref in candidates if not await run_is_running(client, ref)]

    @activity.defn(name=PoolActivityName.COLLECT_SESSION)
    async def collect_session(self, request: CollectSessionInput) -> CollectedSession:
        try:
            nodes = await self.port.release(request.session_id)
        except PermanentClusterError as error:
            raise ApplicationError(f"collect session {request.session_id}: {error}", non_retryable=True) from error
        except ClusterUnavailable:
            raise
        activity.logger.info("collected leaked session %s (%d nodes)", request.session_id, nodes)
        return CollectedSession(session_id=request.session_id, nodes=nodes)

    @activity.defn(name=PoolActivityName.DELETE_UNCLAIMED_NODE)
    @map_port_errors
    async def delete_unclaimed_node(self, request: NodeRef) -> UnclaimedNodeDeletion:
        """The pool drops only nodes nobody holds: a session may claim a free node between the
        refill's inventory and this call, and then the session keeps it."""
        deleted = await self.port.delete_node_if_unclaimed(request.node_id)
        if not deleted:
            activity.logger.info("pool node %s was claimed meanwhile; not deleted", request.node_id)
        return UnclaimedNodeDeletion(node_id=request.node_id, deleted=deleted)

    @activity.defn(name=CapacityActivityName.ADMIT_CAPACITY)
    async def admit_capacity(self, request: CapacityRequest) -> CapacityNotice:
        """Ask the broker by signal-with-start; its answer (grant, place, refusal) comes as a
        `capacity_notice` signal. Not an update: Temporal admits 10 updates in flight per workflow,
        and a class of 300 starting at once is 300 requests to one broker."""
        await self.ask_capacity(request)
        return CapacityNotice()

    async def ask_capacity(self, request: CapacityRequest) -> None:
        """The broker's `request` signal, with-start (from inside any activity of this worker: the
        claim's call asks with it too, CLAIM_ASKS_FLOW)."""
        await self._signal_with_start("request", request, request.limits)

    @activity.defn(name=CapacityActivityName.REQUEST_CAPACITY)
    async def request_capacity(self, request: CapacityRequest) -> None:
        """Sessions before ticket numbers: the answer comes later as `capacity_notice` signals."""
        await self._signal_with_start("request", request, request.limits)

    @activity.defn(name=CapacityActivityName.RELEASE_CAPACITY)
    async def release_capacity(self, release: CapacityRelease) -> None:
        try:
            await self.client().get_workflow_handle(self._broker_id()).signal("release", release)
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise  # no broker: nothing is held

    @activity.defn(name=CapacityActivityName.RESERVE_POOL_CAPACITY)
    async def reserve_pool_capacity(self, reservation: PoolReservation) -> PoolReservationResult:
        return await self._update_with_start("reserve_pool", reservation, reservation.limits, PoolReservationResult)

    @activity.defn(name=CapacityActivityName.CAPACITY_USAGE)
    @map_port_errors
    async def capacity_usage(self, request: CapacityUsageInput) -> CapacityUsage:
        """The cluster as counts for the broker, plus what exists of the grants it has in flight
        (the node list stays here: it grows with the cluster)."""
        if isinstance(self.port, CountsUsage):
            counts = await self.port.usage_counts(request.sessions, request.nodes)
        else:
            counts = count_usage(await self.port.inventory(), request.sessions, request.nodes)
        return CapacityUsage(
            vms=counts.vms, memory_bytes=counts.memory_bytes,
            sessions={sid: SessionPresence(vms=v, memory_bytes=m) for sid, (v, m) in counts.sessions.items()},
            nodes=counts.nodes,  # sorted by the port (UsageCounts)
        )

    def _broker_id(self) -> str:
        return capacity_broker_id(activity.info().task_queue)

    def _broker_start(self, limits: CapacityLimits) -> tuple[Any, dict[str, Any]]:
        state = BrokerState(limits=limits, settings=self.broker_settings)
        return state, dict(id=self._broker_id(), task_queue=activity.info().task_queue,
                           id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)

    async def _update_with_start(self, update: str, arg: Any, limits: CapacityLimits, result_type: type) -> Any:
        state, options = self._broker_start(limits)
        operation: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            CAPACITY_BROKER_WORKFLOW, state, **options
        )
        return await self.client().execute_update_with_start_workflow(
            update, arg, start_workflow_operation=operation, result_type=result_type,
        )

    async def _signal_with_start(self, signal: str, arg: Any, limits: CapacityLimits) -> None:
        state, options = self._broker_start(limits)
        options.pop("id_conflict_policy")
        await self.client().start_workflow(
            CAPACITY_BROKER_WORKFLOW, state, start_signal=signal, start_signal_args=[arg], **options,
        )

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.pool_plan, self.pool_view, self.ended_sessions, self.collect_session, self.delete_unclaimed_node,
            self.request_capacity, self.release_capacity, self.reserve_pool_capacity, self.admit_capacity,
            self.capacity_usage,
        ]
