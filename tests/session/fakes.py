"""Test stand-ins: an in-memory cluster port with controllable nodes, and script activities.

The in-memory port keeps the port's contract (idempotent, exclusive claims) so the workflow's time
rules can be tested on the time-skipping server without the simulated backend's SQLite and SSH.
The script stand-ins carry the real activity names (the SSH implementation lives in
activities/script_activities.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from temporalio import activity

from cluster.models import (
    ClaimRequest,
    ClaimResult,
    Inventory,
    InventorySummary,
    NodePhase,
    NodeRecord,
    NodeSpec,
    NodeState,
    NodeStatus,
    SessionRef,
    SessionWiring,
    SshEndpoint,
    SshTarget,
    summarize,
)
from cluster.port import ClusterUnavailable, NodeNotFound
from labs.models import Check, Lab, LabNode, NodeClass, Role, Script, Scripts
from workflows.models import (
    ActivityName,
    CheckReport,
    CheckResult,
    ChecksInput,
    ClockStepInput,
    ClockStepResult,
    SessionCredentials,
    SetupInput,
    SetupResult,
    TeardownInput,
)


class MemoryCluster:
    """A cluster port in a dict. `never_ready` node IDs stay provisioning; `failing` ones fail."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeRecord] = {}
        self.statuses: dict[str, NodePhase] = {}
        self.wired: set[str] = set()
        self.exposed: dict[str, str] = {}
        self.never_ready = False
        self.fail_reason: str | None = None
        self.provision_calls: list[str] = []
        self.unavailable_calls = 0  # the next N calls raise ClusterUnavailable
        self.unavailable_method: str | None = None  # ... only calls of this port method (None: any)
        self.not_ready_calls: dict[str, int] = {}  # node ID -> how many status calls answer not-ready
        self.paused: set[str] = set()
        self.pause_calls: list[str] = []  # "pause <id>" / "unpause <id>", in order
        self.fail_unpause = False  # unpausing leaves the node FAILED (it never comes back)

    def _maybe_unavailable(self, method: str) -> None:
        if self.unavailable_method not in (None, method):
            return
        if self.unavailable_calls > 0:
            self.unavailable_calls -= 1
            raise ClusterUnavailable("simulated API outage")

    def add_warm(self, node_id: str, node_class: str, role: Role) -> None:
        self.nodes[node_id] = NodeRecord(
            node_id=node_id, node_class=node_class, role=role, image="img:1", state=NodeState.FREE,
            created_at=datetime.now(UTC),
        )
        self.statuses[node_id] = NodePhase.READY

    async def provision(self, spec: NodeSpec) -> NodeRecord:
        self._maybe_unavailable("provision")
        self.provision_calls.append(spec.node_id)
        if spec.node_id not in self.nodes:
            self.nodes[spec.node_id] = NodeRecord(
                node_id=spec.node_id, node_class=spec.node_class, role=spec.role, image=spec.image,
                state=NodeState.CLAIMED if spec.session else NodeState.PROVISIONING, session=spec.session,
                created_at=datetime.now(UTC),
            )
            if self.fail_reason:
                self.statuses[spec.node_id] = NodePhase.FAILED
            else:
                self.statuses[spec.node_id] = NodePhase.PROVISIONING if self.never_ready else NodePhase.READY
        return self.nodes[spec.node_id]

    async def node_status(self, node_id: str) -> NodeStatus:
        self._maybe_unavailable("node_status")
        if node_id not in self.nodes:
            return NodeStatus(node_id=node_id, phase=NodePhase.MISSING)
        phase = self.statuses[node_id]
        if self.not_ready_calls.get(node_id, 0) > 0:
            self.not_ready_calls[node_id] -= 1
            phase = NodePhase.NOT_READY
        return NodeStatus(
            node_id=node_id, phase=phase, address="10.0.0.1" if phase == NodePhase.READY else None,
            reason=self.fail_reason if phase == NodePhase.FAILED else None,
        )

    async def pause_node(self, node_id: str) -> None:
        if node_id not in self.nodes:
            raise NodeNotFound(node_id)
        self.pause_calls.append(f"pause {node_id}")
        self.paused.add(node_id)
        self.statuses[node_id] = NodePhase.PAUSED

    async def unpause_node(self, node_id: str) -> None:
        if node_id not in self.nodes:
            raise NodeNotFound(node_id)
        self.pause_calls.append(f"unpause {node_id}")
        self.paused.discard(node_id)
        self.statuses[node_id] = NodePhase.FAILED if self.fail_unpause else NodePhase.READY

    async def mark_free(self, node_id: str) -> NodeRecord:
        record = self.nodes[node_id].model_copy(update={"state": NodeState.FREE})
        self.nodes[node_id] = record
        return record

    async def ssh_target(self, node_id: str) -> SshTarget:
        if node_id not in self.nodes:
            raise NodeNotFound(node_id)
        return SshTarget(node_id=node_id, host="127.0.0.1", port=22)

    async def delete_node(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)
        self.statuses.pop(node_id, None)

    async def delete_node_if_unclaimed(self, node_id: str) -> bool:
        record = self.nodes.get(node_id)
        if record is not None and record.state == NodeState.CLAIMED:
            return False
        await self.delete_node(node_id)
        return True

    async def claim(self, request: ClaimRequest) -> ClaimResult:
        self._maybe_unavailable("claim")
        mine = [n for n in self.nodes.values() if n.session and n.session.session_id == request.session.session_id]
        claimed: list[NodeRecord] = []
        for want in request.wants:
            have = [n for n in mine if n.node_class == want.node_class and n.state == NodeState.CLAIMED]
            for record in sorted(self.nodes.values(), key=lambda r: r.node_id):
                if len(have) >= want.count:
                    break
                if record.node_class == want.node_class and record.state == NodeState.FREE:
                    record = record.model_copy(update={"state": NodeState.CLAIMED, "session": request.session})
                    self.nodes[record.node_id] = record
                    have.append(record)
            claimed += have
        return ClaimResult(nodes=claimed)

    async def wire(self, wiring: SessionWiring) -> None:
        self.wired.add(wiring.session.session_id)

    async def unwire(self, session_id: str) -> None:
        self.wired.discard(session_id)

    async def expose(self, session_id: str, node_id: str) -> SshEndpoint:
        self.exposed[session_id] = node_id
        return SshEndpoint(host="127.0.0.1", port=30022)

    async def unexpose(self, session_id: str) -> None:
        self.exposed.pop(session_id, None)

    async def release(self, session_id: str) -> int:
        self._maybe_unavailable("release")
        doomed = [n.node_id for n in self.nodes.values() if n.session and n.session.session_id == session_id]
        for node_id in doomed:
            await self.delete_node(node_id)
        return len(doomed)

    async def inventory(self) -> Inventory:
        return Inventory(nodes=list(self.nodes.values()))

    async def inventory_summary(self) -> InventorySummary:
        return summarize(await self.inventory())

    def session_objects(self) -> list[str]:
        """Anything a session still holds (must be empty after teardown)."""
        held = [f"node {n.node_id}" for n in self.nodes.values() if n.session is not None]
        return held + [f"wiring {s}" for s in self.wired] + [f"ssh {s}" for s in self.exposed]


def fake_key_pair(comment: str) -> tuple[str, str]:
    """The student's key pair in tests (ClusterActivities(key_pair=...)): recorded histories must not
    hold a private key, even a throwaway one."""
    return f"PRIVATE-{comment}", f"ssh-ed25519 AAAA {comment}"


class ScriptStandIns:
    """Script activities under their real names, recording calls; checks pass unless told otherwise."""

    def __init__(self, port: Any = None) -> None:
        self.port = port  # given: `run_setup` exposes SSH when asked, like the real activity
        self.setups: list[SetupInput] = []
        self.check_runs = 0
        self.teardowns = 0
        self.checks_pass = True
        self.check_seconds = 0.0  # how long one check run takes (real time)
        self.setup_seconds = 0.0  # how long setup takes (real time)
        self.clock_steps: list[list[str]] = []  # lab node names per step_guest_clocks call

    def all(self) -> list[Callable[..., Any]]:
        return [self.create_session_credentials, self.run_setup, self.run_checks, self.run_teardown_scripts,
                self.step_guest_clocks]

    @activity.defn(name=ActivityName.STEP_GUEST_CLOCKS)
    async def step_guest_clocks(self, request: ClockStepInput) -> ClockStepResult:
        self.clock_steps.append([n.name for n in request.nodes])
        return ClockStepResult(stepped=[n.name for n in request.nodes])

    @activity.defn(name=ActivityName.CREATE_SESSION_CREDENTIALS)
    async def create_session_credentials(self, session: SessionRef) -> SessionCredentials:
        return SessionCredentials(
            private_key=f"PRIVATE-{session.session_id}", public_key=f"ssh-ed25519 AAAA {session.session_id}"
        )

    @activity.defn(name=ActivityName.RUN_SETUP)
    async def run_setup(self, request: SetupInput) -> SetupResult:
        self.setups.append(request)
        if self.setup_seconds:
            await asyncio.sleep(self.setup_seconds)
        if request.expose is None or self.port is None:
            return SetupResult()
        return SetupResult(endpoint=await self.port.expose(request.expose.session_id, request.expose.node_id))

    @activity.defn(name=ActivityName.RUN_CHECKS)
    async def run_checks(self, request: ChecksInput) -> CheckReport:
        self.check_runs += 1
        if self.check_seconds:
            await asyncio.sleep(self.check_seconds)
        results = [
            CheckResult(name=c.name, node=c.node, passed=self.checks_pass, points=c.points if self.checks_pass else 0,
                        max_points=c.points, duration_seconds=0.01)
            for c in request.checks
        ]
        return CheckReport(
            results=results, score=sum(r.points for r in results), max_score=sum(r.max_points for r in results),
            checked_at=datetime.now(UTC),
        )

    @activity.defn(name=ActivityName.RUN_TEARDOWN_SCRIPTS)
    async def run_teardown_scripts(self, request: TeardownInput) -> None:
        self.teardowns += 1


NODE_CLASSES = {
    "cp-1-31": NodeClass(name="cp-1-31", role=Role.CONTROLPLANE, image="registry.test/cp:1.31.0",
                         kubernetes_version="1.31.0"),
    "worker-1-31": NodeClass(name="worker-1-31", role=Role.WORKER, image="registry.test/worker:1.31.0",
                             kubernetes_version="1.31.0"),
}


def make_lab(name: str = "broken-kubelet", workers: int = 2, **overrides: Any) -> Lab:
    nodes = [LabNode(name="controlplane", role=Role.CONTROLPLANE, node_class="cp-1-31")]
    nodes += [LabNode(name=f"node{i:02d}", role=Role.WORKER, node_class="worker-1-31") for i in range(1, workers + 1)]
    fields: dict[str, Any] = dict(
        name=name, title="Fix the kubelet", nodes=nodes,
        scripts=Scripts(
            setup=[Script(name="break-kubelet", node="node01" if workers else "controlplane", run="true")],
            teardown=[Script(name="collect-logs", role="all", run="true")],
        ),
        checks=[Check(name="nodes-ready", run="kubectl get nodes", points=2),
                Check(name="pods-running", run="kubectl get pods", points=1)],
    )
    fields.update(overrides)
    return Lab(**fields)
