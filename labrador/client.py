"""LabClient: what the app and the CLI call to run students' lab sessions.

One workflow per student (`lab-session/<student>`, ID conflict policy FAIL) is what enforces one
active lab per student globally. Every refusal is a `LabError` whose message names the field or the
state that was wrong; nothing is started or changed when one is raised. `TemporalUnreachable` means
the infrastructure, not the request, is at fault (CLI exit code 3).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.client import (
    WorkflowExecutionStatus as Status,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from cluster.naming import InvalidName, session_id, session_workflow_id, validate_student_id
from cluster.published_images import PublishedImages, with_effective_images
from labrador.codec import CodecError
from labrador.published_images import published_images_store
from labrador.settings import Settings
from labs.models import Catalog, Lab, parse_duration, quantity_bytes
from workflows import search_attributes
from workflows.capacity.models import CapacityLimits, CapacityNotice, PositionRequest, capacity_broker_id
from workflows.lab_session import WORKFLOW_NAME, LabSessionWorkflow
from workflows.models import (
    CheckReport,
    CheckRequest,
    EndRequest,
    ExtendRequest,
    ExtendResult,
    LabSessionInput,
    LabSessionResult,
    LabStatus,
    PauseLimits,
    PauseRequest,
    PauseResult,
    Phase,
    ResetLimits,
    ResetRequest,
    ResetResult,
    ResumeRequest,
    ResumeResult,
    SessionEvents,
    SessionTimings,
    WaitReadyRequest,
    WaitReadyResult,
)
from workflows.session.patches import CURRENT_FLOW

_TRANSIENT = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED}
_UPDATE_ATTEMPTS = 5


class LabError(Exception):
    """The request was refused (bad input or a state that does not allow it). Nothing changed."""


class NoSession(LabError):
    pass


class SessionConflict(LabError):
    pass


class PayloadsUndecodable(LabError):
    """This client has no codec key (or not the right one) for the stack's encrypted payloads; nothing
    was sent. One line naming the key id and where keys are configured (CLI exit 1)."""


class TemporalUnreachable(Exception):
    """Temporal did not answer: the infrastructure is at fault, not the request."""


class WorkerUnavailable(TemporalUnreachable):
    """Temporal answered but no worker did (a query or update needs one): nothing changed."""


class Pending(Exception):
    """The request was delivered but its effect is not confirmed yet (no worker has acted on it)."""


class EndPending(Pending):
    pass


class UpdatePending(Pending):
    """extend/check/pause/resume not taken by any worker in time (nothing confirmed, maybe applied later)."""


STATUS_QUERY_TIMEOUT = timedelta(seconds=10)
UPDATE_ACCEPT_TIMEOUT = timedelta(seconds=30)
MAX_REASON_CHARS = 200


class StartedSession(BaseModel):
    student_id: str
    lab_name: str
    workflow_id: str
    run_id: str
    session_id: str
    ready: WaitReadyResult | None = None
    existing: bool = False
    """True when the student already had this lab running: start returned it instead of a new one."""


class SessionSummary(BaseModel):
    student_id: str | None
    lab_name: str | None
    phase: str | None
    workflow_id: str
    run_id: str
    started_at: datetime | None
    closed_at: datetime | None = None
    status: str


def timings_from_settings(settings: Settings) -> SessionTimings:
    def duration(value: str) -> timedelta:
        parsed = parse_duration(value)
        assert isinstance(parsed, timedelta)
        return parsed

    return SessionTimings(
        unclaimed_timeout=duration(settings.session_unclaimed_timeout),
        provisioning_overdue=duration(settings.session_provisioning_overdue),
        health_interval=duration(settings.session_health_interval),
        health_grace=duration(settings.session_health_grace),
        max_lab_duration=duration(settings.max_lab_duration),
        extend_window=duration(settings.session_extend_window),
        check_min_interval=duration(settings.session_check_min_interval),
    )


def pause_limits(settings: Settings, lab: Lab) -> PauseLimits:
    """The settings' pause rules, overridden by the lab file's `pause:` section."""
    rules = lab.pause
    return PauseLimits(
        longest=rules.longest or _duration(settings.session_pause_longest),
        total=rules.total or _duration(settings.session_pause_total),
        max_pauses=settings.session_pause_max if rules.max_pauses is None else rules.max_pauses,
        grade_when_expired=(settings.session_pause_expired_graded if rules.grade_when_expired is None
                            else rules.grade_when_expired),
    )


def reset_limits(settings: Settings, lab: Lab) -> ResetLimits:
    """The settings' reset rules, overridden by the lab file's `reset:` section."""
    rules = lab.reset
    return ResetLimits(
        max_resets=settings.session_reset_max if rules.max_resets is None else rules.max_resets,
        restart_time=settings.session_reset_restarts_time if rules.restart_time is None else rules.restart_time,
    )


def _duration(value: str) -> timedelta:
    parsed = parse_duration(value)
    assert isinstance(parsed, timedelta)
    return parsed


class LabClient:
    def __init__(
        self,
        client: Client,
        settings: Settings,
        *,
        catalog: Catalog | None = None,
        published: PublishedImages | None = None,
        timings: SessionTimings | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self._catalog = catalog
        self._published = published
        self.timings = timings or timings_from_settings(settings)
        self._decodable_checked = False

    @classmethod
    async def connect(cls, settings: Settings, **kwargs: Any) -> LabClient:
        from cluster.secret_files import InsecureKeyFile
        from labrador.codec import CodecError
        from labrador.temporal import connect

        try:
            client = await connect(settings)
        except (CodecError, InsecureKeyFile) as exc:  # a key file to fix, not an unreachable server
            raise LabError(str(exc)) from None
        except (RuntimeError, RPCError, OSError) as exc:
            raise TemporalUnreachable(
                f"Temporal at {settings.temporal_address} is unreachable ({' '.join(str(exc).split())}); "
                "start it with `labrador dev` or set temporal_address"
            ) from exc
        return cls(client, settings, **kwargs)

    # --- catalog --------------------------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            from labrador.settings import catalog_limits
            from labs.loader import CatalogError, load_catalog

            try:
                self._catalog = load_catalog(self.settings.catalog_dir, **catalog_limits(self.settings))
            except CatalogError as exc:
                raise LabError(f"catalog {self.settings.catalog_dir} is invalid: {exc}") from exc
        return self._catalog

    @property
    def published(self) -> PublishedImages:
        if self._published is None:
            self._published = published_images_store(self.settings)
        return self._published

    # --- messages -------------------------------------------------------------------------------

    async def start(
        self, student_id: str, lab_name: str, wait: timedelta | None = None, *, memo: dict[str, str] | None = None,
        reuse_running: bool = False,
    ) -> StartedSession:
        """Start a lab for a student, or refuse: bad student ID, unknown lab, a lab already running.

        With `wait`, the first `wait_ready` travels with the start; its answer is in `.ready`. `memo` is
        kept with the run (encrypted like payloads): the HTTP API records who started it there.
        With `reuse_running` (the CLI) it is idempotent for the same student and lab: a second start (a
        retry after a lost answer) returns the running session (`.existing`, with credentials when
        `wait`); without it, or for another lab, a running lab is a SessionConflict. The HTTP API keeps
        the conflict (its Idempotency-Key answers retries) so one app key never gets another's credentials."""
        workflow_id = self._workflow_id(student_id, new=True)
        lab = self.catalog.labs.get(lab_name)
        if lab is None:
            known = ", ".join(sorted(self.catalog.labs)) or "none"
            raise LabError(f"lab: {lab_name!r} is not in the catalog (known labs: {known})")
        used = {node.node_class for node in lab.nodes}
        classes = with_effective_images(
            {name: cls for name, cls in self.catalog.node_classes.items() if name in used}, self.published.all()
        )
        request = LabSessionInput(
            student_id=student_id, lab=lab, node_classes=classes, timings=self.timings,
            # The global cap: cold provisions wait in the pool's capacity queue (workflows/capacity.py).
            # Webhook events (workflows/webhooks.py) only when somebody receives them.
            events=SessionEvents(expiring_before=_duration(self.settings.webhook_expiring_before))
            if self.settings.webhook_urls.strip() else None,
            capacity=CapacityLimits(
                max_vms=self.settings.max_vms, max_memory_bytes=quantity_bytes(self.settings.max_memory)
            ),
            pause=pause_limits(self.settings, lab),
            reset=reset_limits(self.settings, lab),
            flow=CURRENT_FLOW,
        )
        options: dict[str, Any] = dict(
            id=workflow_id,
            task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(search_attributes.STUDENT_ID, student_id),
                    SearchAttributePair(search_attributes.LAB_NAME, lab.name),
                    SearchAttributePair(search_attributes.LAB_PHASE, Phase.CLAIMING.value),
                ]
            ),
            static_summary=f"{lab.name} for {student_id}",
            **({"memo": memo} if memo else {}),
        )
        ready: WaitReadyResult | None = None
        await self._require_decodable()
        try:
            if wait is None:
                handle = await self.client.start_workflow(LabSessionWorkflow.run, request, **options)
            else:
                # Start and the first wait_ready in one call (update-with-start): one round trip less.
                operation = WithStartWorkflowOperation(LabSessionWorkflow.run, request, **options)
                ready = await self.client.execute_update_with_start_workflow(
                    LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=wait),
                    start_workflow_operation=operation, id=f"wait-ready-{uuid.uuid4()}",
                )
                handle = await operation.workflow_handle()
        except WorkflowAlreadyStartedError:
            if not reuse_running:
                raise await self._conflict(student_id) from None
            return await self._existing_or_conflict(student_id, lab.name, wait)
        except WorkflowUpdateFailedError as exc:
            raise LabError(_message(exc)) from exc
        except RPCError as exc:
            raise self._rpc_error(exc) from exc
        except CodecError as exc:
            raise PayloadsUndecodable(str(exc)) from None
        run_id = handle.result_run_id or handle.run_id or ""
        return StartedSession(
            student_id=student_id, lab_name=lab.name, workflow_id=workflow_id, run_id=run_id,
            session_id=session_id(student_id, run_id), ready=ready,
        )

    async def wait_ready(self, student_id: str, wait: timedelta = timedelta(seconds=20)) -> WaitReadyResult:
        """One poll: credentials when ready, else "not ready yet" after `wait`. One update ID per call,
        kept across transport retries (Temporal answers a repeated ID with the first result)."""
        handle = self._handle(student_id)
        await self._require_decodable()
        update_id = f"wait-ready-{uuid.uuid4()}"
        for attempt in range(_UPDATE_ATTEMPTS):
            try:
                try:
                    async with asyncio.timeout(UPDATE_ACCEPT_TIMEOUT.total_seconds()):
                        accepted = await handle.start_update(
                            LabSessionWorkflow.wait_ready, WaitReadyRequest(wait=wait), id=update_id,
                            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                        )
                except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
                    raise WorkerUnavailable(
                        f"no worker answered for {student_id!r}'s lab within "
                        f"{UPDATE_ACCEPT_TIMEOUT.total_seconds():g} s (is a worker polling task queue "
                        f"{self.settings.task_queue!r}?)"
                    ) from None
                return await accepted.result()
            except CodecError as exc:
                raise PayloadsUndecodable(str(exc)) from None
            except WorkflowUpdateFailedError as exc:
                raise LabError(_message(exc)) from exc
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    status = await self.status(student_id)  # the session is over: say how it ended
                    return WaitReadyResult(ready=False, phase=status.phase, reason=status.reason)
                if exc.status in _TRANSIENT and attempt < _UPDATE_ATTEMPTS - 1:
                    await asyncio.sleep(0.2 * 2**attempt)
                    continue
                raise self._rpc_error(exc) from exc
        raise AssertionError("unreachable")

    async def extend(self, student_id: str) -> ExtendResult:
        result: ExtendResult = await self._update(student_id, LabSessionWorkflow.extend, ExtendRequest())
        return result

    async def check(self, student_id: str) -> CheckReport:
        report: CheckReport = await self._update(student_id, LabSessionWorkflow.check, CheckRequest())
        return report

    async def pause(self, student_id: str) -> PauseResult:
        """Stop the lab's clock (SSH closed, VMs paused in place); refused unless ready/running and
        within the lab's pause limits. The answer says when the pause would end the lab."""
        result: PauseResult = await self._update(student_id, LabSessionWorkflow.pause, PauseRequest())
        return result

    async def resume(self, student_id: str) -> ResumeResult:
        """Run a paused lab again; the answer has the (maybe new) SSH endpoint and the moved deadline.
        `wait_ready` answers with the same endpoint and the student's key."""
        result: ResumeResult = await self._update(student_id, LabSessionWorkflow.resume, ResumeRequest())
        return result

    async def reset(self, student_id: str) -> ResetResult:
        """Fresh nodes of the same lab in the same session; returns once they are ready and the
        student is switched over (new SSH endpoint, same key). Refused unless running and within the
        lab's reset limit; if the new nodes fail, the lab goes on with the old ones (LabError)."""
        result: ResetResult = await self._update(student_id, LabSessionWorkflow.reset, ResetRequest())
        return result

    async def end(self, student_id: str, reason: str = "ended by student") -> LabStatus:
        """Check that a lab runs (the signal alone would not say), then signal it to end.

        The signal is durable once sent: if no worker answers the status query afterwards, EndPending
        says so (the lab ends when a worker picks it up) instead of reporting a failure."""
        if len(reason) > MAX_REASON_CHARS or any(ord(c) < 32 for c in reason):
            raise LabError(f"reason: at most {MAX_REASON_CHARS} characters on one line (got {len(reason)})")
        handle = self._handle(student_id)
        await self._require_decodable()
        await self._require_running(student_id, handle)
        try:
            await handle.signal(LabSessionWorkflow.end, EndRequest(reason=reason))
        except RPCError as exc:
            raise self._rpc_error(exc, student_id) from exc
        except CodecError as exc:
            raise PayloadsUndecodable(str(exc)) from None
        try:
            return await self.status(student_id)
        except TemporalUnreachable:
            raise EndPending(
                f"end requested for {student_id!r}; the lab will end when a worker picks it up "
                f"(no worker answered within {STATUS_QUERY_TIMEOUT.total_seconds():g} s)"
            ) from None

    async def status(self, student_id: str) -> LabStatus:
        handle = self._handle(student_id)
        try:
            status: LabStatus = await handle.query(LabSessionWorkflow.status, rpc_timeout=STATUS_QUERY_TIMEOUT)
        except WorkflowQueryFailedError as exc:
            raise LabError(f"status of {student_id}'s lab: {exc}") from exc
        except CodecError as exc:
            raise PayloadsUndecodable(str(exc)) from None
        except RPCError as exc:
            if exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
                raise WorkerUnavailable(
                    f"no worker answered for {student_id!r}'s lab within {STATUS_QUERY_TIMEOUT.total_seconds():g} s "
                    f"(is a worker polling task queue {self.settings.task_queue!r}?)"
                ) from exc
            raise self._rpc_error(exc, student_id) from exc
        if status.phase == Phase.QUEUED:
            status = await self._live_position(status)
        return status

    async def _live_position(self, status: LabStatus) -> LabStatus:
        """The session knows the place it was last told; the broker computes the live one (exact)."""
        broker = self.client.get_workflow_handle(capacity_broker_id(self.settings.task_queue))
        try:
            notice: CapacityNotice = await broker.query(
                "position", PositionRequest(workflow_id=self._workflow_id(status.student_id)),
                result_type=CapacityNotice,
            )
        except (RPCError, WorkflowQueryFailedError):
            return status  # no broker (yet), or it does not answer: the session's own figure
        if notice.position is None:
            return status
        return status.model_copy(update={"queue_position": notice.position})

    async def result(self, student_id: str) -> LabSessionResult:
        handle = self.client.get_workflow_handle_for(LabSessionWorkflow.run, self._workflow_id(student_id))
        try:
            return await handle.result()
        except CodecError as exc:
            raise PayloadsUndecodable(str(exc)) from None

    async def list(self, phase: str | None = None) -> list[SessionSummary]:
        """Sessions by phase (visibility); without a phase, the running ones."""
        query = f"WorkflowType = '{WORKFLOW_NAME}'"
        if phase is not None:
            try:
                query += f" AND LabPhase = '{Phase(phase).value}'"
            except ValueError:
                raise LabError(f"phase: {phase!r} is not one of {', '.join(p.value for p in Phase)}") from None
        else:
            query += " AND ExecutionStatus = 'Running'"
        summaries = []
        try:
            async for execution in self.client.list_workflows(query):
                attrs = execution.typed_search_attributes
                summaries.append(
                    SessionSummary(
                        student_id=attrs.get(search_attributes.STUDENT_ID),
                        lab_name=attrs.get(search_attributes.LAB_NAME),
                        phase=attrs.get(search_attributes.LAB_PHASE),
                        workflow_id=execution.id,
                        run_id=execution.run_id,
                        started_at=execution.start_time,
                        closed_at=execution.close_time,
                        status=execution.status.name.lower() if execution.status else "unknown",
                    )
                )
        except RPCError as exc:
            raise self._rpc_error(exc) from exc
        return summaries

    # --- helpers --------------------------------------------------------------------------------

    def _workflow_id(self, student_id: str, *, new: bool = False) -> str:
        try:
            validate_student_id(student_id, existing=not new)
        except InvalidName as exc:
            raise LabError(str(exc)) from None
        return session_workflow_id(student_id)

    def _handle(self, student_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(self._workflow_id(student_id))

    async def _require_running(self, student_id: str, handle: WorkflowHandle[Any, Any]) -> None:
        try:
            description = await handle.describe()
        except RPCError as exc:
            raise self._rpc_error(exc, student_id) from exc
        if description.status != Status.RUNNING:
            raise NoSession(f"student: {student_id!r} has no lab running (the last one has ended)")

    async def _update(self, student_id: str, update: Any, request: BaseModel) -> Any:
        """An update, accepted by a worker within UPDATE_ACCEPT_TIMEOUT or UpdatePending (no worker took
        it: it may still apply when one picks the lab up), then its result however long it runs."""
        handle = self._handle(student_id)
        await self._require_decodable()
        update_id = f"{update.__name__}-{uuid.uuid4()}"
        for attempt in range(_UPDATE_ATTEMPTS):
            try:
                try:
                    async with asyncio.timeout(UPDATE_ACCEPT_TIMEOUT.total_seconds()):
                        accepted = await handle.start_update(
                            update, request, id=update_id, wait_for_stage=WorkflowUpdateStage.ACCEPTED
                        )
                except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
                    raise UpdatePending(
                        f"{update.__name__} requested for {student_id!r}, but no worker took it within "
                        f"{UPDATE_ACCEPT_TIMEOUT.total_seconds():g} s; it may still apply when a worker picks the "
                        "lab up (see labrador lab status)"
                    ) from None
                return await accepted.result()
            except CodecError as exc:
                raise PayloadsUndecodable(str(exc)) from None
            except WorkflowUpdateFailedError as exc:
                raise LabError(_message(exc)) from exc
            except RPCError as exc:
                if exc.status in _TRANSIENT and attempt < _UPDATE_ATTEMPTS - 1:
                    await asyncio.sleep(0.2 * 2**attempt)
                    continue
                raise self._rpc_error(exc, student_id) from exc
        raise AssertionError("unreachable")

    async def _require_decodable(self) -> None:
        """A keyless client on an encrypted stack refuses before it writes anything (labrador.stack_codec)."""
        if self._decodable_checked:
            return
        from labrador.codec import keys_text
        from labrador.stack_codec import refuse_if_undecodable

        try:
            await refuse_if_undecodable(
                self.client, self.settings.task_queue, has_keys=keys_text(self.settings) is not None
            )
        except CodecError as exc:
            raise PayloadsUndecodable(str(exc)) from None
        except RPCError as exc:
            raise self._rpc_error(exc) from exc
        self._decodable_checked = True

    async def _existing_or_conflict(self, student_id: str, lab_name: str, wait: timedelta | None) -> StartedSession:
        """The running session when it is the same lab (start is idempotent), else SessionConflict."""
        handle = self._handle(student_id)
        try:
            description = await handle.describe()
        except RPCError:
            raise await self._conflict(student_id) from None
        if description.status != Status.RUNNING or description.typed_search_attributes.get(
            search_attributes.LAB_NAME
        ) != lab_name:
            raise await self._conflict(student_id)
        run_id = description.run_id
        ready = await self.wait_ready(student_id, wait) if wait is not None else None
        return StartedSession(
            student_id=student_id, lab_name=lab_name, workflow_id=description.id, run_id=run_id,
            session_id=session_id(student_id, run_id), ready=ready, existing=True,
        )

    async def _conflict(self, student_id: str) -> LabError:
        handle = self._handle(student_id)
        try:
            description = await handle.describe()
        except RPCError:
            return SessionConflict(f"student: {student_id!r} already has a lab running")
        attrs = description.typed_search_attributes
        lab = attrs.get(search_attributes.LAB_NAME) or "a lab"
        phase = attrs.get(search_attributes.LAB_PHASE) or "unknown"
        started = f"{description.start_time:%Y-%m-%d %H:%M:%S} UTC" if description.start_time else "earlier"
        return SessionConflict(
            f"student: {student_id!r} already has lab {lab!r} running since {started} (phase {phase}); "
            f"end it first (labrador lab end --student {student_id})"
        )

    def _rpc_error(self, exc: RPCError, student_id: str | None = None) -> Exception:
        if exc.status == RPCStatusCode.NOT_FOUND and student_id is not None:
            return NoSession(f"student: {student_id!r} has no lab running")
        if exc.status in _TRANSIENT:
            return TemporalUnreachable(f"Temporal at {self.settings.temporal_address} did not answer: {exc.message}")
        if "already completed" in exc.message and student_id is not None:
            return NoSession(f"student: {student_id!r} has no lab running (the last one has ended)")
        return LabError(exc.message)


def _message(exc: WorkflowUpdateFailedError) -> str:
    cause: Any = exc.cause
    while cause is not None and not isinstance(cause, ApplicationError) and getattr(cause, "cause", None):
        cause = cause.cause
    return getattr(cause, "message", None) or str(cause or exc)

