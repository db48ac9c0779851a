"""The activity steps of preparing a lab (claim, provision, wait until ready, wire, set up, expose) and
of grading it (checks). Used by the first preparation, by reset and by resume.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from cluster.models import (
        ClaimRequest,
        ClaimResult,
        ClaimWant,
        NodePhase,
        NodeRecord,
        NodeSpec,
        NodeStatus,
        SessionWiring,
        SshEndpoint,
    )
    from cluster.naming import dns_label
    from labs.models import LabNode
    from workflows.models import (
        ActivityName,
        BoundNode,
        CapacityAsk,
        CheckReport,
        ChecksInput,
        ClaimAndPrepareInput,
        ClaimAndPrepareResult,
        ExposeInput,
        NodeRef,
        Phase,
        PrepareNodesInput,
        PrepareNodesResult,
        ProvisionInput,
        SessionCredentials,
        SetupInput,
        SetupResult,
        WaitReadyInput,
        bind_claimed,
        capacity_need,
        session_wiring,
    )
    from workflows.session.calls import (
        CHECK_RETRY,
        CREDENTIALS_CALL,
        SCRIPT_HEARTBEAT,
        SCRIPT_RETRY,
        SETUP_PLATFORM_STEPS,
        WAIT_READY_RETRY,
        Call,
        CallOptions,
        cluster_call,
        local_call,
        plain_call,
    )
    from workflows.session.events import SessionEvents
    from workflows.session.failures import SessionFailed, cause_of
    from workflows.session.patches import CLAIM_PREPARES_FLOW
    from workflows.webhooks import EventType


class SessionSteps(SessionEvents):
    """One method per step; each calls its activities by name."""

    async def _claim_warm_nodes(
        self, call: Call | None = None, *, prepare: bool = False, ask: CapacityAsk | None = None
    ) -> None:
        """The one claiming step (the pool's capacity queue goes right after it). With `prepare` (a
        start's first claim, CLAIM_PREPARES_FLOW) the same call prepares the nodes if all came warm;
        with `ask` (CLAIM_ASKS_FLOW) it asks the capacity broker if some must be cold
        (`self._asked_with_claim`)."""
        call = call or plain_call
        wants = Counter(node.node_class for node in self._lab.nodes)
        request = ClaimRequest(
            session=self._session, wants=[ClaimWant(node_class=c, count=n) for c, n in wants.items()]
        )
        if prepare and self._input.flow >= CLAIM_PREPARES_FLOW:
            try:
                answer: ClaimAndPrepareResult = await call(
                    ActivityName.CLAIM_AND_PREPARE,
                    ClaimAndPrepareInput(claim=request, lab_nodes=list(self._lab.nodes),
                                         credentials_for=self._session.session_id, ask=ask),
                    ClaimAndPrepareResult,
                )
            except BaseException:  # failed or cancelled: it may have asked the broker before
                if ask is not None:
                    self._capacity.may_have_asked()
                raise
            claim, self._prepared, self._asked_with_claim = answer.claim, answer.prepared, answer.asked
        else:
            claim = await call(ActivityName.CLAIM_NODES, request, ClaimResult)
        claimed = Counter(record.node_class for record in claim.nodes)
        for node_class, wanted in sorted(wants.items()):
            if claimed[node_class] < wanted:  # the warm pool had too few: cold nodes follow
                bucket = workflow.now().replace(second=0, microsecond=0)
                bucket = bucket.replace(minute=bucket.minute - bucket.minute % 5)
                self._emit(EventType.POOL_LOW, node_class=node_class, wanted=wanted,
                           claimed=claimed[node_class],
                           event_id=f"pool.low.{node_class}.{bucket:%Y%m%dT%H%M}")
        for lab_node, record in zip(self._lab.nodes, bind_claimed(list(self._lab.nodes), claim.nodes), strict=True):
            if record is not None:
                self._nodes.append(
                    BoundNode(name=lab_node.name, node_id=record.node_id, role=lab_node.role.value, warm=True)
                )
            else:
                self._nodes.append(
                    BoundNode(
                        name=lab_node.name, node_id=self._cold_node_id(lab_node), role=lab_node.role.value, warm=False
                    )
                )

    def _capacity_need(self) -> tuple[int, int, int, int]:
        """What this session asks the capacity broker for with the nodes it holds now (`capacity_need`:
        all of its VMs and their memory, the cold ones as new): a start's queue and a reset alike."""
        warm = {node.name: node.warm for node in self._nodes}
        return capacity_need(list(self._lab.nodes), [warm[n.name] for n in self._lab.nodes],
                             self._memory_by_class())

    def _memory_by_class(self) -> dict[str, int]:
        """The memory in bytes of a node of each class the lab uses (what the cap counts)."""
        classes = self._input.node_classes
        return {n.node_class: classes[n.node_class].memory_bytes for n in self._lab.nodes}

    async def _give_up_warm_nodes(self, call: Call | None = None) -> None:
        """Delete the warm nodes this session claimed and plan cold ones in their place."""
        call = call or plain_call
        lab_nodes = {n.name: n for n in self._lab.nodes}
        warm = [node for node in self._nodes if node.warm]
        await self._all(call(ActivityName.DELETE_NODE, NodeRef(node_id=node.node_id), None)
                        for node in warm)
        self._nodes = [
            node.model_copy(update={"warm": False, "node_id": self._cold_node_id(lab_nodes[node.name])})
            if node.warm else node
            for node in self._nodes
        ]

    def _cold_node_id(self, lab_node: LabNode) -> str:
        # Deterministic: a retried or replayed provision finds the node it already created.
        return dns_label(self._session.session_id, lab_node.name)

    async def _provision_missing_nodes(self) -> None:
        lab_nodes = {n.name: n for n in self._lab.nodes}
        await self._all(
            self._provision(lab_nodes[node.name], node.node_id) for node in self._nodes if not node.warm
        )

    async def _prepare_nodes(self) -> SessionCredentials:
        """Provision, readiness, wiring and the student's key pair in one local activity
        (LEAN_START_PATCH): a warm start (or a backend that boots at once) is done here; nodes still
        booting are waited for one by one, then the session is wired by its own call."""
        lab_nodes = {n.name: n for n in self._lab.nodes}
        self._nodes_ready = 0
        result, self._prepared = self._prepared, None  # prepared with the claim (CLAIM_PREPARES_FLOW)
        if result is None:
            result = await cluster_call(
                ActivityName.PREPARE_NODES,
                PrepareNodesInput(
                    provision=[self._node_spec(lab_nodes[n.name], n.node_id) for n in self._nodes if not n.warm],
                    nodes=[n.node_id for n in self._nodes], wiring=self._wiring(),
                    credentials_for=self._session.session_id,
                ),
                PrepareNodesResult,
                "prepare the nodes",
            )
        statuses = result.statuses
        self._nodes_ready = sum(1 for s in statuses if s.phase == NodePhase.READY)
        if not result.wired:

            async def ready(node: BoundNode, status: NodeStatus) -> NodeStatus:
                if status.phase == NodePhase.READY:
                    return status
                status = await self._wait_for_node(node)
                self._nodes_ready += 1
                return status

            statuses = await self._all(ready(n, s) for n, s in zip(self._nodes, statuses, strict=True))
        self._nodes = [
            node.model_copy(update={"address": status.address, "healthy": True})
            for node, status in zip(self._nodes, statuses, strict=True)
        ]
        self._enter(Phase.WIRING)  # a phase of its own in `phase_seconds` (0 s when wired above)
        if not result.wired:
            await self._wire()
        assert result.credentials is not None
        return result.credentials

    def _node_spec(self, lab_node: LabNode, node_id: str) -> NodeSpec:
        node_class = self._input.node_classes[lab_node.node_class]
        return NodeSpec(
            node_id=node_id,
            node_class=node_class.name,
            role=lab_node.role,
            image=node_class.image,
            kubernetes_version=node_class.kubernetes_version,
            cpu_cores=node_class.cpu_cores,
            memory=node_class.effective_memory,
            disk=node_class.disk,
            session=self._session,
        )

    async def _provision(self, lab_node: LabNode, node_id: str) -> None:
        spec = self._node_spec(lab_node, node_id)
        await cluster_call(
            ActivityName.PROVISION_NODE, ProvisionInput(spec=spec), NodeRecord, f"provision {lab_node.name}"
        )

    async def _wait_until_nodes_ready(self) -> None:
        self._nodes_ready = 0

        async def counted(node: BoundNode) -> NodeStatus:
            status = await self._node_ready(node)
            self._nodes_ready += 1  # state for the status query only: the commands are the same
            return status

        statuses = await self._all(counted(node) for node in self._nodes)
        self._nodes = [
            node.model_copy(update={"address": status.address, "healthy": True})
            for node, status in zip(self._nodes, statuses, strict=True)
        ]

    async def _node_ready(self, node: BoundNode) -> NodeStatus:
        """One quick look first (warm nodes are ready already), then a heartbeating wait if needed."""
        status: NodeStatus = await cluster_call(
            ActivityName.NODE_HEALTH, NodeRef(node_id=node.node_id), NodeStatus, f"status of {node.name}"
        )
        if status.phase == NodePhase.READY:
            return status
        return await self._wait_for_node(node)

    async def _wait_for_node(self, node: BoundNode) -> NodeStatus:
        overdue = self._input.timings.provisioning_overdue
        try:
            return await workflow.execute_activity(
                ActivityName.WAIT_NODE_READY,
                WaitReadyInput(node_id=node.node_id, timeout=overdue, poll_interval=timedelta(seconds=1)),
                result_type=NodeStatus,
                start_to_close_timeout=overdue + timedelta(minutes=1),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=WAIT_READY_RETRY,
                summary=f"wait for {node.name}",
            )
        except ActivityError as error:
            raise SessionFailed(f"node {node.name} never became ready: {cause_of(error)}") from error

    async def _node_status(self, node: BoundNode, options: CallOptions) -> NodeStatus:
        status: NodeStatus = await local_call(
            ActivityName.NODE_HEALTH, NodeRef(node_id=node.node_id), NodeStatus, options
        )
        return status

    def _wiring(self) -> SessionWiring:
        node_ids = [self._node_named(n.name).node_id for n in self._lab.nodes]
        return session_wiring(self._session, list(self._lab.nodes), node_ids)

    async def _wire(self) -> None:
        await cluster_call(ActivityName.WIRE_SESSION, self._wiring(), None, "wire the session")

    async def _create_credentials(self) -> SessionCredentials:
        credentials: SessionCredentials = await local_call(
            ActivityName.CREATE_SESSION_CREDENTIALS, self._session, SessionCredentials, CREDENTIALS_CALL
        )
        return credentials

    async def _set_up_session(self, *, expose: bool = False) -> None:
        """Setup scripts; with `expose` (LEAN_START_PATCH) the activity also exposes SSH once they all
        succeeded, and `_expose` then has nothing left to do."""
        assert self._credentials is not None
        self._set_up = True  # from here on, teardown scripts may have something to undo
        scripts_time = sum((s.timeout for s in self._lab.scripts.setup), timedelta())
        result: SetupResult = await workflow.execute_activity(
            ActivityName.RUN_SETUP,
            SetupInput(
                session=self._session, lab=self._lab, nodes=self._nodes,
                student_public_key=self._credentials.public_key,
                expose=ExposeInput(session_id=self._session.session_id,
                                   node_id=self._node_named(self._lab.controlplane.name).node_id)
                if expose else None,
            ),
            result_type=SetupResult,
            start_to_close_timeout=scripts_time + SETUP_PLATFORM_STEPS,
            heartbeat_timeout=SCRIPT_HEARTBEAT,
            retry_policy=SCRIPT_RETRY,
            summary="setup scripts",
        )
        # Host keys seen at first contact are pinned for every later connection (checks, teardown).
        self._nodes = [
            node.model_copy(update={"host_key": result.host_keys.get(node.name, node.host_key)})
            for node in self._nodes
        ]
        if result.endpoint is not None:
            self._endpoint = result.endpoint
        for script in result.scripts:
            if script.timed_out or script.exit_code != 0:
                what = "timed out" if script.timed_out else f"exited with {script.exit_code}"
                raise SessionFailed(
                    f"setup script {script.script} on {script.node} {what}",
                    f"setup script {script.script} on {script.node} {what}: {script.output[-400:]}",
                )

    async def _expose(self, *, unless_exposed: bool = False) -> None:
        if unless_exposed and self._endpoint is not None:
            return  # the setup activity exposed it (`_set_up_session(expose=True)`)
        controlplane = self._node_named(self._lab.controlplane.name)
        self._endpoint = await cluster_call(
            ActivityName.EXPOSE_SSH,
            ExposeInput(session_id=self._session.session_id, node_id=controlplane.node_id),
            SshEndpoint,
            "expose SSH",
        )

    async def _run_checks(self) -> CheckReport:
        if not self._lab.checks:
            return CheckReport(checked_at=workflow.now())
        checks_time = sum((c.timeout for c in self._lab.checks), timedelta())
        report: CheckReport = await workflow.execute_activity(
            ActivityName.RUN_CHECKS,
            ChecksInput(session=self._session, checks=self._lab.checks, nodes=self._nodes),
            result_type=CheckReport,
            start_to_close_timeout=checks_time + timedelta(minutes=1),
            heartbeat_timeout=SCRIPT_HEARTBEAT,
            retry_policy=CHECK_RETRY,
            summary="checks",
        )
        return report
