"""Reading VM/VMI/DataVolume status into port answers. Pure functions of the objects (and a clock
for the clone follower), so every readiness/failure case is a unit test."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cluster.kubevirt import labels as L
from cluster.models import NodePhase, NodeState, NodeStatus

Obj = dict[str, Any]

# VM printableStatus values after which waiting is pointless: the session should fail fast.
FAILED_PRINTABLE_STATUSES = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "CrashLoopBackOff", "ErrorUnschedulable", "ErrorPvcNotFound"}
)


def _conditions(obj: Obj | None) -> list[Obj]:
    return list(((obj or {}).get("status") or {}).get("conditions") or [])


def _condition(obj: Obj | None, kind: str) -> Obj | None:
    return next((c for c in _conditions(obj) if c.get("type") == kind), None)


def _first_message(obj: Obj | None) -> str:
    """The most useful human message among the object's failing conditions."""
    for cond in _conditions(obj):
        if cond.get("status") == "False" and cond.get("message"):
            return str(cond["message"])
    for cond in _conditions(obj):
        if cond.get("type") in ("Failure", "Synchronized") and cond.get("message"):
            return str(cond["message"])
    return ""


def is_terminating(obj: Obj | None) -> bool:
    return bool(obj and (obj.get("metadata") or {}).get("deletionTimestamp"))


def node_state(namespace: Obj) -> NodeState | None:
    value = ((namespace.get("metadata") or {}).get("labels") or {}).get(L.STATE)
    try:
        return NodeState(value) if value else None
    except ValueError:
        return None


def is_deleting(namespace: Obj | None) -> bool:
    """A node namespace on its way out: terminating, or marked deleting by delete-if-unclaimed
    (the mark comes first; the namespace delete follows it)."""
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    return is_terminating(namespace) or labels.get(L.STATE) == L.STATE_DELETING


def vmi_address(vmi: Obj | None) -> str | None:
    interfaces = ((vmi or {}).get("status") or {}).get("interfaces") or []
    if not interfaces:
        return None
    first = interfaces[0] or {}
    return first.get("ipAddress") or None


def is_ready(vmi: Obj | None) -> bool:
    status = (vmi or {}).get("status") or {}
    ready = _condition(vmi, "Ready")
    return status.get("phase") == "Running" and bool(ready and ready.get("status") == "True") and bool(
        vmi_address(vmi)
    )


def is_paused(vmi: Obj | None) -> bool:
    """KubeVirt sets the VMI condition Paused=True while it is paused (and Ready goes False)."""
    paused = _condition(vmi, "Paused")
    return bool(paused and paused.get("status") == "True")


def parse_node_status(node_id: str, namespace: Obj | None, vm: Obj | None, vmi: Obj | None) -> NodeStatus:
    if namespace is None or is_deleting(namespace):
        return NodeStatus(node_id=node_id, phase=NodePhase.MISSING,
                          reason="namespace absent" if namespace is None else "namespace being deleted")
    if vm is None:
        return NodeStatus(node_id=node_id, phase=NodePhase.PROVISIONING, reason="VirtualMachine not created yet")
    vm_meta = vm.get("metadata") or {}
    where = f"VirtualMachine {vm_meta.get('namespace')}/{vm_meta.get('name')}"
    printable = str((vm.get("status") or {}).get("printableStatus") or "")
    if printable in FAILED_PRINTABLE_STATUSES:
        detail = _first_message(vm) or _first_message(vmi)
        return NodeStatus(node_id=node_id, phase=NodePhase.FAILED,
                          reason=f"{where}: {printable}" + (f": {detail}" if detail else ""))
    vmi_phase = ((vmi or {}).get("status") or {}).get("phase")
    if vmi_phase == "Failed":
        detail = _first_message(vmi)
        return NodeStatus(node_id=node_id, phase=NodePhase.FAILED,
                          reason=f"VirtualMachineInstance of {where}: phase Failed" + (f": {detail}" if detail else ""))
    if vmi_phase == "Running" and is_paused(vmi):
        return NodeStatus(node_id=node_id, phase=NodePhase.PAUSED, address=vmi_address(vmi), reason="paused")
    if is_ready(vmi):
        return NodeStatus(node_id=node_id, phase=NodePhase.READY, address=vmi_address(vmi))
    waiting = f"{where}: {printable or 'no status yet'}" + (f", VMI phase {vmi_phase}" if vmi_phase else "")
    if node_state(namespace) in (NodeState.FREE, NodeState.CLAIMED):
        # It was ready once (free/claimed happen after readiness): now it is not.
        return NodeStatus(node_id=node_id, phase=NodePhase.NOT_READY, reason=waiting)
    return NodeStatus(node_id=node_id, phase=NodePhase.PROVISIONING, reason=waiting)


# --- PVC clone follower -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClonePolicy:
    stall_timeout: timedelta = timedelta(minutes=10)
    restart_limit: int = 3
    max_attempts: int = 3
    backoff: timedelta = timedelta(seconds=30)

    def backoff_for(self, attempt: int) -> timedelta:
        return self.backoff * (2 ** max(attempt - 1, 0))


@dataclass(frozen=True)
class CloneTracking:
    """What the follower remembers between observations, kept as namespace annotations so a
    worker restart loses nothing."""

    attempt: int = 1
    progress: str = ""
    progress_at: datetime | None = None
    retry_at: datetime | None = None
    last_error: str = ""

    @classmethod
    def from_annotations(cls, annotations: dict[str, str] | None) -> CloneTracking:
        a = annotations or {}

        def when(key: str) -> datetime | None:
            return datetime.fromisoformat(a[key]) if a.get(key) else None

        return cls(
            attempt=int(a.get(L.CLONE_ATTEMPT) or 1),
            progress=a.get(L.CLONE_PROGRESS, ""),
            progress_at=when(L.CLONE_PROGRESS_AT),
            retry_at=when(L.CLONE_RETRY_AT),
            last_error=a.get(L.CLONE_LAST_ERROR, ""),
        )

    def annotations(self) -> dict[str, str | None]:
        """Merge-patch values (None removes a key)."""
        return {
            L.CLONE_ATTEMPT: str(self.attempt),
            L.CLONE_PROGRESS: self.progress,
            L.CLONE_PROGRESS_AT: self.progress_at.isoformat() if self.progress_at else None,
            L.CLONE_RETRY_AT: self.retry_at.isoformat() if self.retry_at else None,
            L.CLONE_LAST_ERROR: self.last_error or None,
        }


class CloneAction(StrEnum):
    DONE = "done"  # Succeeded: the VM takes over
    WAIT = "wait"  # nothing to do now
    TRACK = "track"  # progress moved: remember it
    RESTART = "restart"  # delete DataVolume + PVC, schedule a new attempt after backoff
    CREATE = "create"  # backoff elapsed, old objects gone: create the DataVolume again
    GIVE_UP = "give-up"  # attempts exhausted


@dataclass(frozen=True)
class CloneDecision:
    action: CloneAction
    tracking: CloneTracking
    reason: str = ""


def decide_clone(dv: Obj | None, tracking: CloneTracking, now: datetime, policy: ClonePolicy) -> CloneDecision:
    if dv is None:
        if tracking.retry_at is not None and now < tracking.retry_at:
            wait = int((tracking.retry_at - now).total_seconds())
            return CloneDecision(CloneAction.WAIT, tracking,
                                 f"clone attempt {tracking.attempt + 1} in {wait}s after: {tracking.last_error}")
        new = replace(tracking, attempt=tracking.attempt + (1 if tracking.retry_at else 0), progress="",
                      progress_at=now, retry_at=None)
        return CloneDecision(CloneAction.CREATE, new, "DataVolume absent: creating it")
    if is_terminating(dv):
        return CloneDecision(CloneAction.WAIT, tracking, "previous DataVolume still terminating")
    status = dv.get("status") or {}
    phase = str(status.get("phase") or "")
    progress = str(status.get("progress") or "")
    restarts = int(status.get("restartCount") or 0)
    if phase == "Succeeded":
        return CloneDecision(CloneAction.DONE, tracking, "clone succeeded")
    cause = ""
    if phase == "Failed":
        cause = "DataVolume phase Failed" + (f": {_first_message(dv)}" if _first_message(dv) else "")
    elif restarts > policy.restart_limit:
        cause = f"clone pod restarted {restarts} times (limit {policy.restart_limit})"
    elif progress != tracking.progress or tracking.progress_at is None:
        return CloneDecision(CloneAction.TRACK, replace(tracking, progress=progress, progress_at=now),
                             f"clone {phase or 'pending'} {progress or ''}".strip())
    elif now - tracking.progress_at > policy.stall_timeout:
        fallback = ((dv.get("metadata") or {}).get("annotations") or {}).get("cdi.kubevirt.io/cloneFallbackReason")
        cause = (f"no clone progress for {int((now - tracking.progress_at).total_seconds())}s "
                 f"(phase {phase or 'none'}, progress {progress or 'none'})")
        if fallback:
            cause += f"; CDI fell back to host-assisted copy: {fallback}"
    if not cause:
        return CloneDecision(CloneAction.WAIT, tracking, f"clone {phase or 'pending'} {progress}".strip())
    if tracking.attempt >= policy.max_attempts:
        return CloneDecision(CloneAction.GIVE_UP, replace(tracking, last_error=cause),
                             f"clone failed {tracking.attempt} times, giving up; last cause: {cause}")
    retry_at = now + policy.backoff_for(tracking.attempt)
    return CloneDecision(CloneAction.RESTART, replace(tracking, retry_at=retry_at, last_error=cause),
                         f"clone attempt {tracking.attempt} failed ({cause}); retrying")
