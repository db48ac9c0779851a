"""Inputs, outputs and messages of the workflows, and the activity contracts they call.

Pure pydantic models: the workflows, the activities, the client and the CLI all import them.
Activities are called by name (see `ActivityName`) so workflows never import activity code.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from cluster.models import (
    ClaimRequest,
    ClaimResult,
    NodeRecord,
    NodeSpec,
    NodeStatus,
    SessionRef,
    SessionWiring,
    SshEndpoint,
)
from labs.models import Check, Lab, LabNode, NodeClass, Role, Script
from workflows.capacity.models import CapacityRequest
from workflows.pool_models import CapacityLimits


class Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class ActivityName(StrEnum):
    # cluster (activities/cluster_activities.py)
    CLAIM_NODES = "claim_nodes"
    PROVISION_NODE = "provision_node"
    PREPARE_NODES = "prepare_nodes"  # provision + one look per node + wire, in one call (LEAN_START_PATCH)
    CLAIM_AND_PREPARE = "claim_and_prepare_nodes"  # the claim, and prepare_nodes if all came warm (flow 2)
    WAIT_NODE_READY = "wait_node_ready"
    NODE_HEALTH = "node_health"
    MARK_NODE_FREE = "mark_node_free"
    DELETE_NODE = "delete_node"
    WIRE_SESSION = "wire_session"
    UNWIRE_SESSION = "unwire_session"
    EXPOSE_SSH = "expose_ssh"
    UNEXPOSE_SSH = "unexpose_ssh"
    RELEASE_SESSION = "release_session"
    INVENTORY = "inventory"  # the node list: only for activities and tools, never into a workflow
    INVENTORY_SUMMARY = "inventory_summary"
    PAUSE_NODE = "pause_node"
    UNPAUSE_NODE = "unpause_node"
    # scripts over SSH (activities/script_activities.py)
    CREATE_SESSION_CREDENTIALS = "create_session_credentials"
    RUN_SETUP = "run_setup"
    RUN_CHECKS = "run_checks"
    RUN_TEARDOWN_SCRIPTS = "run_teardown_scripts"
    STEP_GUEST_CLOCKS = "step_guest_clocks"


class Phase(StrEnum):
    QUEUED = "queued"
    CLAIMING = "claiming"
    PROVISIONING = "provisioning"
    WIRING = "wiring"
    SETTING_UP = "setting-up"
    EXPOSING = "exposing"
    READY = "ready"
    RUNNING = "running"
    PAUSED = "paused"  # timers stopped, SSH unexposed, VMs paused in place (update `pause`, `resume`)
    RESETTING = "resetting"  # fresh nodes being prepared next to the old ones (update `reset`)
    GRADING = "grading"
    TEARING_DOWN = "tearing-down"
    ENDED = "ended"
    EXPIRED = "expired"
    FAILED = "failed"


TERMINAL_PHASES = frozenset({Phase.ENDED, Phase.EXPIRED, Phase.FAILED})


class SessionTimings(Model):
    """Time rules copied from settings into the workflow input at start."""

    unclaimed_timeout: timedelta = timedelta(minutes=10)
    provisioning_overdue: timedelta = timedelta(minutes=15)
    health_interval: timedelta = timedelta(seconds=30)
    health_grace: timedelta = timedelta(minutes=2)
    max_queue_wait: timedelta = timedelta(minutes=30)
    # Message rules (settings max_lab_duration, session_extend_window, session_check_min_interval).
    max_lab_duration: timedelta = Field(
        default=timedelta(hours=4), description="the lab's time with every extension stays within this"
    )
    extend_window: timedelta = Field(
        default=timedelta(minutes=15), description="extend is allowed only this close to the deadline"
    )
    check_min_interval: timedelta = Field(
        default=timedelta(seconds=10), description="at most one student check started per interval"
    )
    phase_shown_after: timedelta = Field(
        default=timedelta(seconds=5),
        description="a phase before ready reaches Visibility (LabPhase) once it has lasted this long "
        "(runs with flow >= QUIET_FLOW; workflows/session/state.py)",
    )


class PauseLimits(Model):
    """Effective pause rules of one session (settings, overridden by the lab file's `pause:`)."""

    longest: timedelta = timedelta(minutes=30)
    total: timedelta = timedelta(hours=2)
    max_pauses: int = 3
    grade_when_expired: bool = False


class ResetLimits(Model):
    """Effective reset rules of one session (settings, overridden by the lab file's `reset:`)."""

    max_resets: int = 1
    restart_time: bool = False


class SessionEvents(Model):
    """Webhook events of the session (workflows/webhooks.py); set at start when webhook_urls is set."""

    expiring_before: timedelta = Field(default=timedelta(minutes=5), description="lab.expiring this long before")


class LabSessionInput(Model):
    student_id: str
    lab: Lab
    node_classes: dict[str, NodeClass] = Field(
        description="the classes the lab uses, with `image` already set to the effective image"
    )
    timings: SessionTimings = Field(default_factory=SessionTimings)
    capacity: CapacityLimits | None = Field(
        default=None,
        description="global cap (settings max_vms/max_memory): cold provisions wait in the pool's queue; None: no cap",
    )
    pause: PauseLimits = Field(default_factory=PauseLimits)
    reset: ResetLimits = Field(default_factory=ResetLimits)
    events: SessionEvents | None = Field(default=None, description="webhook events; None: none are emitted")
    flow: int = Field(
        default=0, ge=0,
        description="the command sequence the run takes, chosen by the starter (workflows/session/patches.py "
        "CURRENT_FLOW); 0: decided by patch markers, as before the field existed",
    )


# --- node bindings ------------------------------------------------------------------------------


class BoundNode(Model):
    """A lab node (controlplane, node01, ...) bound to a cluster node ID."""

    name: str
    node_id: str
    role: str
    warm: bool = Field(description="claimed from the pool (True) or cold-provisioned (False)")
    address: str | None = None
    healthy: bool = True
    host_key: str | None = Field(
        default=None,
        description="SSH host key ('algorithm base64') pinned at first contact; later connections must match",
    )


# --- scripts and checks (activities/script_activities.py) ---------------------------------------


class SessionCredentials(Model):
    """Per-session student key pair. Travels only in encrypted payloads."""

    private_key: str
    public_key: str


class ExposeInput(Model):
    session_id: str
    node_id: str


class SetupInput(Model):
    session: SessionRef
    lab: Lab
    nodes: list[BoundNode]
    student_public_key: str
    expose: ExposeInput | None = Field(
        None, description="expose SSH to this node once every setup step succeeded (LEAN_START_PATCH)"
    )


class ScriptResult(Model):
    node: str
    script: str
    exit_code: int | None
    output: str = Field(description="stdout+stderr, truncated")
    duration_seconds: float
    timed_out: bool = False


class SetupResult(Model):
    scripts: list[ScriptResult] = Field(default_factory=list)
    host_keys: dict[str, str] = Field(
        default_factory=dict,
        description="lab node name -> host key seen at first contact; copy into BoundNode.host_key",
    )
    endpoint: SshEndpoint | None = Field(None, description="SSH exposed as asked by `SetupInput.expose`")


class ChecksInput(Model):
    session: SessionRef
    checks: list[Check]
    nodes: list[BoundNode]


class CheckResult(Model):
    name: str
    node: str
    passed: bool
    points: int
    max_points: int
    duration_seconds: float
    output_excerpt: str = ""


class CheckReport(Model):
    results: list[CheckResult] = Field(default_factory=list)
    score: int = 0
    max_score: int = 0
    checked_at: datetime | None = None


class TeardownInput(Model):
    session: SessionRef
    scripts: list[Script]
    nodes: list[BoundNode]


class ClockStepInput(Model):
    """After an unpause: set each guest's clock to the orchestrator's (no guest agent does it)."""

    session: SessionRef
    nodes: list[BoundNode]


class ClockStepResult(Model):
    stepped: list[str] = Field(default_factory=list, description="lab node names whose clock was set")
    failed: dict[str, str] = Field(default_factory=dict, description="lab node name -> why it could not be set")


# --- cluster activity inputs ----------------------------------------------------------------------


class NodeRef(Model):
    node_id: str


class WaitReadyInput(Model):
    node_id: str
    timeout: timedelta = timedelta(minutes=10)
    poll_interval: timedelta = timedelta(seconds=2)


class SessionIdInput(Model):
    session_id: str


class ProvisionInput(Model):
    spec: NodeSpec


class PrepareNodesInput(Model):
    """One call for the platform steps of a start: create the cold nodes (create-or-get), look at every
    node once, and wire the session when every node is ready (a warm start, or a backend that boots at
    once). Nodes that are not ready yet are waited for by `wait_node_ready`, then wired apart."""

    provision: list[NodeSpec] = Field(default_factory=list, description="cold nodes to create")
    nodes: list[str] = Field(description="node IDs of the session, in lab order: one look each")
    wiring: SessionWiring
    credentials_for: str | None = Field(None, description="session ID: also make the student's key pair")


class PrepareNodesResult(Model):
    statuses: list[NodeStatus] = Field(description="in the order of `nodes`")
    wired: bool = False
    credentials: SessionCredentials | None = None


class CapacityAsk(Model):
    """What the claim's call needs to ask the capacity broker for a start's cold nodes
    (CLAIM_ASKS_FLOW): the request itself is `capacity_request`, once the claim shows which are cold."""

    limits: CapacityLimits
    requested_at: datetime
    memory_by_class: dict[str, int] = Field(description="memory in bytes of a node of each class the lab uses")


class ClaimAndPrepareInput(Model):
    """The claim of a start and, when the warm pool had every node the lab wants, `prepare_nodes` for
    them in the same call (CLAIM_PREPARES_FLOW): one local activity instead of two on a warm start.
    With `ask` (CLAIM_ASKS_FLOW, under a cap), when some node must be cold the same call asks the
    capacity broker for them: one local activity instead of two on a cold start."""

    claim: ClaimRequest
    lab_nodes: list[LabNode] = Field(description="the lab's nodes in lab order: how claimed nodes are bound")
    credentials_for: str = Field(description="session ID: the student's key pair, as prepare_nodes makes it")
    ask: CapacityAsk | None = Field(None, description="ask the capacity broker when some node must be cold")


class ClaimAndPrepareResult(Model):
    claim: ClaimResult
    prepared: PrepareNodesResult | None = Field(
        None, description="None: some node must be cold, or preparing failed (the workflow prepares apart)"
    )
    asked: bool = Field(False, description="the broker was asked for the cold nodes (`capacity_request`)")


def capacity_need(
    lab_nodes: list[LabNode], warm: list[bool], memory_by_class: dict[str, int]
) -> tuple[int, int, int, int]:
    """What a start needs under the cap, its lab nodes having come warm or not (lab order): all of its
    VMs and their memory, and the cold ones (what it will create) and theirs. The one computation of
    these numbers: the workflow's own ask and the claim's call (`capacity_request`) both use it."""
    cold = [node for node, came_warm in zip(lab_nodes, warm, strict=True) if not came_warm]
    return (len(lab_nodes), sum(memory_by_class[n.node_class] for n in lab_nodes),
            len(cold), sum(memory_by_class[n.node_class] for n in cold))


def capacity_request(
    session: SessionRef, lab_nodes: list[LabNode], warm: list[bool], ask: CapacityAsk
) -> CapacityRequest:
    """The broker's request of a start whose lab nodes came warm or not (lab order)."""
    vms, memory, new_vms, new_memory = capacity_need(lab_nodes, warm, ask.memory_by_class)
    return CapacityRequest(
        session=session, vms=vms, memory_bytes=memory, limits=ask.limits, requested_at=ask.requested_at,
        new_vms=new_vms, new_memory_bytes=new_memory,
    )


def bind_claimed(lab_nodes: list[LabNode], claimed: list[NodeRecord]) -> list[NodeRecord | None]:
    """The claimed node each lab node gets, in lab order; None where the pool had none of its class left
    (a cold node follows). Deterministic (a class's nodes in node-ID order): the workflow and
    `claim_and_prepare_nodes` bind the same way."""
    free: dict[str, list[NodeRecord]] = {}
    for record in sorted(claimed, key=lambda r: r.node_id):
        free.setdefault(record.node_class, []).append(record)
    return [free[n.node_class].pop(0) if free.get(n.node_class) else None for n in lab_nodes]


def session_wiring(session: SessionRef, lab_nodes: list[LabNode], node_ids: list[str]) -> SessionWiring:
    """The session's wiring, from its node IDs in lab order: the workflow's and
    `claim_and_prepare_nodes`' one way to say which node is the control plane."""
    controlplane = next(i for n, i in zip(lab_nodes, node_ids, strict=True) if n.role == Role.CONTROLPLANE)
    return SessionWiring(session=session, controlplane=controlplane,
                         workers=[i for i in node_ids if i != controlplane])


class ReleaseResult(Model):
    nodes_deleted: int = 0


# --- messages -------------------------------------------------------------------------------------


class WaitReadyRequest(Model):
    wait: timedelta = Field(default=timedelta(seconds=20), description="how long to wait for ready")


class WaitReadyResult(Model):
    ready: bool
    phase: Phase
    endpoint: SshEndpoint | None = None
    private_key: str | None = None
    deadline: datetime | None = None
    reason: str | None = None


class ExtendRequest(Model):
    pass


class ExtendResult(Model):
    deadline: datetime
    extensions_used: int
    extensions_left: int


class PauseRequest(Model):
    pass


class PauseResult(Model):
    paused_at: datetime
    expires_at: datetime = Field(description="past this the lab ends with reason 'pause expired'")
    pauses_left: int
    pause_time_left: timedelta = Field(description="paused time left in all, this pause included")


class ResumeRequest(Model):
    pass


class ResumeResult(Model):
    endpoint: SshEndpoint
    deadline: datetime = Field(description="moved by the time spent paused")
    paused_seconds: float
    clock_problems: dict[str, str] = Field(default_factory=dict, description="nodes whose clock could not be set")


class ResetRequest(Model):
    pass


class ResetResult(Model):
    endpoint: SshEndpoint
    deadline: datetime
    resets_left: int
    nodes: list[BoundNode]


class EndRequest(Model):
    reason: str = "ended by student"


class CheckRequest(Model):
    pass


class LabStatus(Model):
    student_id: str
    lab_name: str
    session_id: str | None = None
    phase: Phase
    started_at: datetime
    ready_at: datetime | None = None
    deadline: datetime | None = None
    extensions_used: int = 0
    nodes: list[BoundNode] = Field(default_factory=list)
    nodes_ready: int | None = Field(default=None, description="while provisioning: nodes ready so far")
    last_check: CheckReport | None = None
    queue_position: int | None = None
    reason: str | None = None
    detail: str | None = None
    paused_at: datetime | None = Field(default=None, description="set while paused")
    pause_expires_at: datetime | None = Field(default=None, description="set while paused")
    pauses_used: int = 0
    paused_seconds: float = Field(default=0.0, description="paused time so far (finished pauses)")
    resets_used: int = 0


class LabSessionResult(Model):
    student_id: str
    lab_name: str
    session_id: str | None
    outcome: Phase
    reason: str
    score: int = 0
    max_score: int = 0
    checks: CheckReport | None = None
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    detail: str = Field(default="", description="a sentence explaining the reason")
    teardown_problems: list[str] = Field(default_factory=list, description="teardown steps that gave up")
