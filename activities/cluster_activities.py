"""Cluster activities: thin wrappers that unpack a model, call the cluster port and map its errors.

Error mapping (see cluster.port): `ClusterUnavailable` becomes a retryable ApplicationError (Temporal
retries it with the caller's policy); `PermanentClusterError` becomes a non-retryable ApplicationError
whose message names the object and the cause, so the workflow can report it as the session's reason.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from cluster.models import (
    ClaimRequest,
    ClaimResult,
    Inventory,
    InventorySummary,
    NodePhase,
    NodeRecord,
    NodeStatus,
    SessionWiring,
    SshEndpoint,
)
from cluster.port import ClusterPort, ClusterUnavailable, PermanentClusterError, WatchesNodes
from cluster.ssh import generate_key_pair
from workflows.capacity.models import CapacityRequest
from workflows.models import (
    ActivityName,
    ClaimAndPrepareInput,
    ClaimAndPrepareResult,
    ExposeInput,
    NodeRef,
    PrepareNodesInput,
    PrepareNodesResult,
    ProvisionInput,
    ReleaseResult,
    SessionCredentials,
    SessionIdInput,
    WaitReadyInput,
    bind_claimed,
    capacity_request,
    session_wiring,
)

P = ParamSpec("P")
T = TypeVar("T")


def map_port_errors(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await func(*args, **kwargs)
        except PermanentClusterError as exc:
            raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from exc
        except ClusterUnavailable as exc:
            raise ApplicationError(f"cluster unavailable: {exc}", type=type(exc).__name__) from exc

    return wrapper


class NodeNeverReady(ApplicationError):
    pass


# A call of a joined activity (`prepare_nodes`) that meets a passing API error tries again at once, a
# few times, instead of failing the whole activity: the retry would redo every other call, and look at
# the nodes later than the per-step calls did (a node that died meanwhile then looks like one booting).
AGAIN_ATTEMPTS, AGAIN_PAUSE = 3, 0.05


async def _again_if_unavailable(call: Callable[[], Awaitable[T]]) -> T:
    for attempt in range(AGAIN_ATTEMPTS):
        try:
            return await call()
        except ClusterUnavailable:
            if attempt == AGAIN_ATTEMPTS - 1:
                raise
            await asyncio.sleep(AGAIN_PAUSE * (attempt + 1))
    raise AssertionError("unreachable")


KeyPair = Callable[[str], tuple[str, str]]  # comment -> (OpenSSH private key, public key line)
AskCapacity = Callable[[CapacityRequest], Awaitable[None]]  # the broker's `request` signal, with-start


class ClusterActivities:
    def __init__(
        self, port: ClusterPort, *, key_pair: KeyPair = generate_key_pair,
        ask_capacity: AskCapacity | None = None,
    ) -> None:
        self.port = port
        # The student's key pair (`prepare_nodes`): tests that record histories pass stand-in keys.
        self.key_pair = key_pair
        # The capacity broker's request (PoolActivities.ask_capacity) for a claim that leaves cold nodes
        # (CLAIM_ASKS_FLOW). Without it the claim does not ask, and the workflow asks with its own call.
        self.ask_capacity = ask_capacity

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.claim_nodes,
            self.claim_and_prepare_nodes,
            self.provision_node,
            self.prepare_nodes,
            self.wait_node_ready,
            self.node_health,
            self.mark_node_free,
            self.delete_node,
            self.wire_session,
            self.unwire_session,
            self.expose_ssh,
            self.unexpose_ssh,
            self.release_session,
            self.inventory,
            self.inventory_summary,
            self.pause_node,
            self.unpause_node,
        ]

    @activity.defn(name=ActivityName.CLAIM_NODES)
    @map_port_errors
    async def claim_nodes(self, request: ClaimRequest) -> ClaimResult:
        return await self.port.claim(request)

    @activity.defn(name=ActivityName.PROVISION_NODE)
    @map_port_errors
    async def provision_node(self, request: ProvisionInput) -> NodeRecord:
        return await self.port.provision(request.spec)

    @activity.defn(name=ActivityName.CLAIM_AND_PREPARE)
    @map_port_errors
    async def claim_and_prepare_nodes(self, request: ClaimAndPrepareInput) -> ClaimAndPrepareResult:
        """`claim_nodes`, then `prepare_nodes` for the claimed nodes if the pool had all the lab wants: a
        warm start's platform steps in one local activity (each one more is a round trip through the
        worker and an activation). Idempotent like both (a claim again returns the session's nodes).
        Preparing is the fast path only: if it fails, the claim is still answered (`prepared` None) and
        the workflow prepares with its own call, which retries and reports as before."""
        claim = await self.port.claim(request.claim)
        bound = bind_claimed(request.lab_nodes, claim.nodes)
        if any(record is None for record in bound):
            if request.ask is None or self.ask_capacity is None:
                return ClaimAndPrepareResult(claim=claim)
            # Asked last: a failed ask retries the whole call (the claim again returns the same nodes),
            # and the broker answers a repeated ask of the same run like the first.
            await self.ask_capacity(capacity_request(
                request.claim.session, request.lab_nodes, [record is not None for record in bound], request.ask
            ))
            return ClaimAndPrepareResult(claim=claim, asked=True)
        node_ids = [record.node_id for record in bound if record is not None]
        try:
            prepared = await self._prepare(PrepareNodesInput(
                nodes=node_ids, wiring=session_wiring(request.claim.session, request.lab_nodes, node_ids),
                credentials_for=request.credentials_for,
            ))
        except (ClusterUnavailable, PermanentClusterError) as exc:
            activity.logger.warning("claim_and_prepare_nodes: claimed, preparing apart: %s", exc)
            return ClaimAndPrepareResult(claim=claim)
        return ClaimAndPrepareResult(claim=claim, prepared=prepared)

    @activity.defn(name=ActivityName.PREPARE_NODES)
    @map_port_errors
    async def prepare_nodes(self, request: PrepareNodesInput) -> PrepareNodesResult:
        """The platform steps of a start in one local activity instead of one per node and step (each
        one a round trip through the worker and a marker in history): create the cold nodes, look at
        every node, wire the session if all are ready. Idempotent like the steps it joins (create-or-get,
        reads, wire; the student's key pair is made anew, like by create_session_credentials); a failed
        node is left to the caller's wait, which reports it."""
        return await self._prepare(request)

    async def _prepare(self, request: PrepareNodesInput) -> PrepareNodesResult:
        await asyncio.gather(*(
            _again_if_unavailable(functools.partial(self.port.provision, spec)) for spec in request.provision
        ))
        statuses = list(await asyncio.gather(*(
            _again_if_unavailable(functools.partial(self.port.node_status, node_id)) for node_id in request.nodes
        )))
        wired = all(status.phase == NodePhase.READY for status in statuses)
        if wired:
            await _again_if_unavailable(functools.partial(self.port.wire, request.wiring))
        credentials = None
        if request.credentials_for is not None:  # like create_session_credentials: encrypted payloads only
            private_key, public_key = self.key_pair(f"labrador-student-{request.credentials_for}")
            credentials = SessionCredentials(private_key=private_key, public_key=public_key)
        return PrepareNodesResult(statuses=statuses, wired=wired, credentials=credentials)

    @activity.defn(name=ActivityName.WAIT_NODE_READY)
    @map_port_errors
    async def wait_node_ready(self, request: WaitReadyInput) -> NodeStatus:
        """Wait until the node is ready; heartbeat at each look. A FAILED or vanished node is permanent.
        A backend that watches (kubevirt's cache) wakes the wait on the node's next event; others
        are asked again every `poll_interval`.

        The first attempt's start time travels in the heartbeat details, so a retried attempt
        (worker restart, heartbeat timeout) keeps counting `timeout` from the original start.
        """
        info = activity.info()
        started = datetime.now(UTC)
        if info.heartbeat_details:
            try:
                started = datetime.fromisoformat(str(info.heartbeat_details[0]))
            except ValueError:
                pass
        deadline = started + request.timeout
        while True:
            status = await self.port.node_status(request.node_id)
            if status.phase == NodePhase.READY:
                return status
            if status.phase == NodePhase.FAILED:
                raise NodeNeverReady(
                    f"node {request.node_id} failed: {status.reason or 'no reason given'}",
                    type="NodeFailed",
                    non_retryable=True,
                )
            if status.phase == NodePhase.MISSING:
                raise NodeNeverReady(
                    f"node {request.node_id} does not exist (deleted while waiting for it)",
                    type="NodeMissing",
                    non_retryable=True,
                )
            if datetime.now(UTC) >= deadline:
                raise NodeNeverReady(
                    f"node {request.node_id} not ready after {request.timeout} "
                    f"(still {status.phase}{': ' + status.reason if status.reason else ''})",
                    type="NodeNotReadyInTime",
                    non_retryable=True,
                )
            activity.heartbeat(started.isoformat())
            if isinstance(self.port, WatchesNodes):
                await self.port.wait_node_change(request.node_id, request.poll_interval.total_seconds())
            else:
                await asyncio.sleep(request.poll_interval.total_seconds())

    @activity.defn(name=ActivityName.NODE_HEALTH)
    @map_port_errors
    async def node_health(self, request: NodeRef) -> NodeStatus:
        return await self.port.node_status(request.node_id)

    @activity.defn(name=ActivityName.MARK_NODE_FREE)
    @map_port_errors
    async def mark_node_free(self, request: NodeRef) -> NodeRecord:
        return await self.port.mark_free(request.node_id)

    @activity.defn(name=ActivityName.DELETE_NODE)
    @map_port_errors
    async def delete_node(self, request: NodeRef) -> None:
        await self.port.delete_node(request.node_id)

    @activity.defn(name=ActivityName.WIRE_SESSION)
    @map_port_errors
    async def wire_session(self, request: SessionWiring) -> None:
        await self.port.wire(request)

    @activity.defn(name=ActivityName.UNWIRE_SESSION)
    @map_port_errors
    async def unwire_session(self, request: SessionIdInput) -> None:
        await self.port.unwire(request.session_id)

    @activity.defn(name=ActivityName.EXPOSE_SSH)
    @map_port_errors
    async def expose_ssh(self, request: ExposeInput) -> SshEndpoint:
        return await self.port.expose(request.session_id, request.node_id)

    @activity.defn(name=ActivityName.UNEXPOSE_SSH)
    @map_port_errors
    async def unexpose_ssh(self, request: SessionIdInput) -> None:
        await self.port.unexpose(request.session_id)

    @activity.defn(name=ActivityName.RELEASE_SESSION)
    @map_port_errors
    async def release_session(self, request: SessionIdInput) -> ReleaseResult:
        return ReleaseResult(nodes_deleted=await self.port.release(request.session_id))

    @activity.defn(name=ActivityName.INVENTORY)
    @map_port_errors
    async def inventory(self) -> Inventory:
        return await self.port.inventory()

    @activity.defn(name=ActivityName.INVENTORY_SUMMARY)
    @map_port_errors
    async def inventory_summary(self) -> InventorySummary:
        return await self.port.inventory_summary()

    @activity.defn(name=ActivityName.PAUSE_NODE)
    @map_port_errors
    async def pause_node(self, request: NodeRef) -> None:
        await self.port.pause_node(request.node_id)

    @activity.defn(name=ActivityName.UNPAUSE_NODE)
    @map_port_errors
    async def unpause_node(self, request: NodeRef) -> None:
        await self.port.unpause_node(request.node_id)
