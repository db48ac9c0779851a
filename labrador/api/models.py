"""The API's own schemas, version 1 (`/v1/...`).

They wrap the workflow models (workflows/models.py) but are a separate contract: a history format can
change without breaking the app, and responses carry what the app needs, never internal node
addresses or host keys. Add fields, never rename or remove them within v1.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from labs.models import Lab, NodeClass
from workflows.models import CheckReport, ExtendResult, LabStatus, Phase

MAX_WAIT_SECONDS = 300


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartSessionRequest(ApiModel):
    student_id: str = Field(min_length=1, max_length=128, examples=["alice"])
    lab: str = Field(min_length=1, max_length=63, examples=["kubelet-broken-worker"])
    wait_seconds: int | None = Field(
        default=None, ge=0, le=MAX_WAIT_SECONDS,
        description="wait up to this long for the lab to be ready; the response then carries the SSH access",
    )


class EndSessionRequest(ApiModel):
    reason: str = Field(default="ended by student", min_length=1, max_length=200,
                        description="recorded as the session's reason; the student sees it")


class NodeView(ApiModel):
    name: str
    role: str
    warm: bool = Field(description="taken from the warm pool (True) or provisioned for this session")
    healthy: bool


class CheckResultView(ApiModel):
    name: str
    node: str
    passed: bool
    points: int
    max_points: int


class CheckReportView(ApiModel):
    score: int
    max_score: int
    checked_at: datetime | None = None
    results: list[CheckResultView] = Field(default_factory=list)

    @classmethod
    def of(cls, report: CheckReport) -> CheckReportView:
        return cls(
            score=report.score, max_score=report.max_score, checked_at=report.checked_at,
            results=[CheckResultView(name=r.name, node=r.node, passed=r.passed, points=r.points,
                                     max_points=r.max_points) for r in report.results],
        )


class Session(ApiModel):
    student_id: str
    lab: str
    session_id: str | None = None
    phase: Phase
    started_at: datetime
    ready_at: datetime | None = None
    deadline: datetime | None = None
    extensions_used: int = 0
    queue_position: int | None = None
    reason: str | None = None
    detail: str | None = None
    nodes: list[NodeView] = Field(default_factory=list)
    last_check: CheckReportView | None = None

    @classmethod
    def of(cls, status: LabStatus) -> Session:
        return cls(
            student_id=status.student_id, lab=status.lab_name, session_id=status.session_id, phase=status.phase,
            started_at=status.started_at, ready_at=status.ready_at, deadline=status.deadline,
            extensions_used=status.extensions_used, queue_position=status.queue_position, reason=status.reason,
            detail=status.detail,
            nodes=[NodeView(name=n.name, role=n.role, warm=n.warm, healthy=n.healthy) for n in status.nodes],
            last_check=CheckReportView.of(status.last_check) if status.last_check else None,
        )


class SshAccess(ApiModel):
    host: str
    port: int
    username: str
    private_key: str = Field(description="the session's private key (OpenSSH PEM); only in this response")
    deadline: datetime | None = None


class StartedSession(ApiModel):
    session: Session
    ready: bool = Field(description="the lab is ready; `ssh` is set")
    ssh: SshAccess | None = Field(default=None, description="set when ready within wait_seconds")


class Extended(ApiModel):
    deadline: datetime
    extensions_used: int
    extensions_left: int

    @classmethod
    def of(cls, result: ExtendResult) -> Extended:
        return cls(deadline=result.deadline, extensions_used=result.extensions_used,
                   extensions_left=result.extensions_left)


class SessionSummary(ApiModel):
    student_id: str | None
    lab: str | None
    phase: str | None
    started_at: datetime | None
    closed_at: datetime | None = None
    status: str = Field(description="Temporal execution status: running, completed, failed, terminated, ...")


class SessionPage(ApiModel):
    items: list[SessionSummary]
    next_page_token: str | None = Field(default=None, description="pass as page_token for the next page")


class LabView(ApiModel):
    name: str
    title: str
    description: str
    kind: Literal["lab", "sandbox"]
    duration_seconds: int
    extension_seconds: int
    max_extensions: int
    nodes: list[dict[str, str]] = Field(description="name, role and node class of each node")
    checks: int = Field(description="number of checks")
    max_score: int

    @classmethod
    def of(cls, lab: Lab) -> LabView:
        return cls(
            name=lab.name, title=lab.title, description=lab.description, kind=lab.kind,
            duration_seconds=int(lab.effective_duration.total_seconds()),
            extension_seconds=int(lab.extension.total_seconds()), max_extensions=lab.max_extensions,
            nodes=[{"name": n.name, "role": str(n.role), "node_class": n.node_class} for n in lab.nodes],
            checks=len(lab.checks), max_score=sum(c.points for c in lab.checks),
        )


class NodeClassView(ApiModel):
    name: str
    description: str
    role: str
    kubernetes_version: str
    cpu_cores: int
    memory_bytes: int

    @classmethod
    def of(cls, node_class: NodeClass) -> NodeClassView:
        return cls(name=node_class.name, description=node_class.description, role=str(node_class.role),
                   kubernetes_version=str(node_class.kubernetes_version), cpu_cores=node_class.cpu_cores,
                   memory_bytes=node_class.memory_bytes)


class Health(ApiModel):
    status: Literal["ok"] = "ok"


class Problem(BaseModel):
    """RFC 9457 problem details; `field` and `value` name what was wrong when it was the request."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    field: str | None = None
    value: str | None = None


class AdminEndRequest(ApiModel):
    """Exactly one of `lab`, `node_class`, `all`, or a `student_id` alone (a stuck session, with `force`)."""

    lab: str | None = Field(default=None, max_length=63)
    node_class: str | None = Field(default=None, max_length=63)
    all: bool = False
    student_id: str | None = Field(default=None, max_length=128)
    reason: str = Field(min_length=1, max_length=200, description="the students see it as their session's reason")
    force: bool = Field(default=False, description="terminate (stuck sessions); leak collection removes the rest")
    dry_run: bool = Field(default=False, description="list what would be ended; nothing changes")
    parallelism: int = Field(default=10, ge=1, le=50)
    page_token: str | None = Field(default=None, max_length=4096, description="dry run: the next page")


class AdminEndTarget(ApiModel):
    student_id: str | None
    lab: str | None
    phase: str | None
    started_at: datetime | None


class AdminEndPreview(ApiModel):
    dry_run: Literal[True] = True
    count: int
    sessions: list[AdminEndTarget]
    next_page_token: str | None = None


class AdminEndStarted(ApiModel):
    bulk_id: str = Field(description="GET /v1/admin/end/{bulk_id} for its totals; workflow bulk-end/{bulk_id}")
    workflow_id: str
    selector: str


class AdminEndStatus(ApiModel):
    bulk_id: str
    status: str = Field(description="running, completed, failed, ...")
    ended: int | None = None
    failed: int | None = None
    failures: list[str] = Field(default_factory=list)
