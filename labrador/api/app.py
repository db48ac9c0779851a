"""The HTTP API: FastAPI routes over LabClient (which holds the Temporal connection and the codec keys).

Contract: docs/api.md. `create_app(settings)` builds the app; `labrador api` and `labrador dev` serve it
with uvicorn (labrador/api/server.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

from cluster.naming import InvalidName, session_workflow_id, validate_student_id
from labrador.api import problems
from labrador.api.guards import BodyLimit, IdempotencyCache, RateLimiter
from labrador.api.keys import ApiKey, Scope, find_key, keys_from_settings
from labrador.api.models import (
    MAX_WAIT_SECONDS,
    AdminEndPreview,
    AdminEndRequest,
    AdminEndStarted,
    AdminEndStatus,
    AdminEndTarget,
    CheckReportView,
    EndSessionRequest,
    Extended,
    Health,
    LabView,
    NodeClassView,
    Problem,
    Session,
    SessionPage,
    SessionSummary,
    SshAccess,
    StartedSession,
    StartSessionRequest,
)
from labrador.api.problems import ProblemError, from_lab_error
from labrador.client import LabClient, LabError, SessionConflict, TemporalUnreachable
from labrador.settings import Settings
from workflows import search_attributes
from workflows.lab_session import WORKFLOW_NAME
from workflows.models import TERMINAL_PHASES, Phase, WaitReadyResult

log = logging.getLogger("labrador.api")
T = TypeVar("T")

API_VERSION = "1.0.0"
MEMO_CALLER = "labrador.api.caller"
MEMO_IDEMPOTENCY = "labrador.api.idempotency_key"
POLL = 20.0  # seconds per wait_ready update (the workflow allows 5 min; shorter polls survive restarts)
MAX_PAGE_SIZE = 200

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {problems.PROBLEM_JSON: {}}, "description": text}
    for status, text in {401: "no or unknown bearer key", 403: "the key's scope does not allow this",
                         422: "invalid request (field and value named)", 429: "rate limit (see Retry-After)",
                         503: "Temporal unreachable"}.items()
}
_SESSION_ERRORS = {**_ERRORS, 404: _ERRORS[401] | {"description": "no lab for this student"},
                   409: _ERRORS[401] | {"description": "a lab already running, or a state that refuses this"}}


class ApiState:
    def __init__(self, settings: Settings, labs: LabClient | None) -> None:
        self.settings = settings
        self.keys = keys_from_settings(settings)
        self.limiter = RateLimiter(settings.api_rate_limit)
        self.replays = IdempotencyCache()
        self._labs = labs
        self._connecting = asyncio.Lock()

    async def labs(self) -> LabClient:
        """The LabClient, connected at first use (and again after a failure): the API starts without Temporal."""
        if self._labs is None:
            async with self._connecting:
                if self._labs is None:
                    self._labs = await LabClient.connect(self.settings)
        return self._labs


_bearer = HTTPBearer(auto_error=False)


def _caller(scope: Scope) -> Callable[..., Awaitable[ApiKey]]:
    async def authenticate(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ApiKey:
        state: ApiState = request.app.state.api
        challenge = {"WWW-Authenticate": 'Bearer realm="labrador"'}
        if credentials is None:
            raise ProblemError(401, "Unauthorized", "authorization: a bearer key is required", headers=challenge)
        key = find_key(state.keys, credentials.credentials)
        if key is None:
            raise ProblemError(401, "Unauthorized", "authorization: the bearer key is not known", headers=challenge)
        if not key.allows(scope):
            raise ProblemError(403, "Forbidden", f"authorization: this key's scope {key.scope} does not allow "
                               f"{scope} operations", kind="forbidden")
        wait = state.limiter.take(key.key_id)
        if wait > 0:
            raise ProblemError(429, "Too many requests",
                               f"rate limit: {state.settings.api_rate_limit} requests per minute per key",
                               headers={"Retry-After": RateLimiter.retry_after(wait)}, kind="rate-limited")
        return key

    return authenticate


App = Annotated[ApiKey, Depends(_caller(Scope.APP))]
Admin = Annotated[ApiKey, Depends(_caller(Scope.ADMIN))]
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", max_length=255,
                       description="a retry with the same key gets the first answer")
]


def create_app(settings: Settings, labs: LabClient | None = None) -> FastAPI:
    state = ApiState(settings, labs)
    app = FastAPI(
        title="labrador API", version=API_VERSION, openapi_url="/openapi.json", docs_url=None, redoc_url=None,
        description="Start, watch, extend, check and end students' lab sessions; see docs/api.md.",
    )
    app.state.api = state
    app.add_exception_handler(ProblemError, problems.problem_handler)
    app.add_exception_handler(RequestValidationError, problems.validation_handler)
    app.add_exception_handler(StarletteHTTPException, problems.http_handler)
    app.add_exception_handler(Exception, problems.internal_handler)
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    async def call(action: Callable[[LabClient], Awaitable[T]]) -> T:
        try:
            return await action(await state.labs())
        except (LabError, TemporalUnreachable) as exc:
            raise from_lab_error(exc) from None
        except RPCError as exc:
            raise from_lab_error(TemporalUnreachable(f"Temporal did not answer: {exc.message}")) from None

    def student(student_id: str) -> str:
        try:
            return validate_student_id(student_id)
        except InvalidName as exc:
            raise ProblemError(422, "Invalid request", str(exc), field="student_id", value=student_id,
                               kind="invalid-request") from None

    # --- unauthenticated ---------------------------------------------------------------------------

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process answers."""
        return Health()

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: _ERRORS[503]})
    async def readyz() -> Health:
        """Temporal answers: the API can serve requests."""
        async def check(labs: LabClient) -> None:
            try:
                await asyncio.wait_for(labs.client.service_client.check_health(), timeout=5)
            except (RPCError, TimeoutError) as exc:
                raise TemporalUnreachable(f"Temporal at {settings.temporal_address} did not answer: {exc}") from None

        await call(check)
        return Health()

    # --- sessions ----------------------------------------------------------------------------------

    @app.post("/v1/sessions", status_code=201, response_model=StartedSession, tags=["sessions"],
              responses=_SESSION_ERRORS)
    async def start_session(body: StartSessionRequest, key: App, request: Request,
                            idempotency_key: IdempotencyKey = None) -> Any:
        """Start a lab for a student (one at a time). With `wait_seconds`, wait up to that long for it to be
        ready: the response then has the SSH access with the private key (only ever returned here and by
        `GET /v1/sessions/{student_id}/ssh` to the same key)."""
        student(body.student_id)
        fingerprint = _fingerprint(body.model_dump())
        replay_key = (key.key_id, "start", idempotency_key) if idempotency_key else None
        if replay_key is not None:
            replay = state.replays.get(replay_key)
            if replay is not None:
                return _replayed(replay, fingerprint, idempotency_key)
        memo = {MEMO_CALLER: key.key_id, **({MEMO_IDEMPOTENCY: _hash(idempotency_key)} if idempotency_key else {})}

        async def start(labs: LabClient) -> StartedSession:
            wait = timedelta(seconds=min(POLL, body.wait_seconds)) if body.wait_seconds else None
            ready: WaitReadyResult | None
            try:
                started = await labs.start(body.student_id, body.lab, wait=wait, memo=memo)
                ready = started.ready
            except SessionConflict:
                # A retry of a start that did happen (maybe through another API replica): same caller, same key.
                if not idempotency_key or not await _started_by(labs, body.student_id, memo):
                    raise
                ready = None
            deadline = time.monotonic() + (body.wait_seconds or 0)
            if body.wait_seconds:
                ready = await _wait(labs, body.student_id, ready, deadline)
            status = await labs.status(body.student_id)
            return _started(status, ready)

        result = await call(start)
        if replay_key is not None:
            state.replays.put(replay_key, fingerprint, 201, result.model_dump(mode="json"))
        return result

    @app.get("/v1/sessions/{student_id}", response_model=Session, tags=["sessions"], responses=_SESSION_ERRORS)
    async def get_session(student_id: str, key: App) -> Session:
        """Phase, deadline, nodes (without addresses) and last check of the student's lab (also the last one
        that ended)."""
        student(student_id)
        return Session.of(await call(lambda labs: labs.status(student_id)))

    @app.get("/v1/sessions/{student_id}/ssh", response_model=StartedSession, tags=["sessions"],
             responses=_SESSION_ERRORS | {403: _ERRORS[403]})
    async def get_ssh(student_id: str, key: App,
                      wait_seconds: Annotated[int, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0) -> StartedSession:
        """The SSH access of a lab started without waiting, for the key that started it only; waits up to
        `wait_seconds` for ready."""
        student(student_id)

        async def fetch(labs: LabClient) -> StartedSession:
            if not await _started_by(labs, student_id, {MEMO_CALLER: key.key_id}):
                raise ProblemError(403, "Forbidden", f"student_id: the lab of {student_id!r} was started by "
                                   "another key; only that key gets its credentials", field="student_id",
                                   value=student_id, kind="forbidden")
            ready = await _wait(labs, student_id, None, time.monotonic() + wait_seconds)
            return _started(await labs.status(student_id), ready)

        return await call(fetch)

    @app.post("/v1/sessions/{student_id}/extend", response_model=Extended, tags=["sessions"],
              responses=_SESSION_ERRORS)
    async def extend_session(student_id: str, key: App) -> Extended:
        """More time for a running lab (the lab's extension, at most max_extensions times)."""
        student(student_id)
        return Extended.of(await call(lambda labs: labs.extend(student_id)))

    @app.post("/v1/sessions/{student_id}/check", response_model=CheckReportView, tags=["sessions"],
              responses=_SESSION_ERRORS)
    async def check_session(student_id: str, key: App) -> CheckReportView:
        """Run the lab's checks now; the lab goes on."""
        student(student_id)
        return CheckReportView.of(await call(lambda labs: labs.check(student_id)))

    @app.post("/v1/sessions/{student_id}/end", status_code=202, response_model=Session, tags=["sessions"],
              responses=_SESSION_ERRORS)
    async def end_session(student_id: str, key: App, body: EndSessionRequest | None = None,
                          idempotency_key: IdempotencyKey = None) -> Any:
        """End the lab: final grading, then teardown (202: it goes on after the answer)."""
        student(student_id)
        request = body or EndSessionRequest()
        fingerprint = _fingerprint({"student_id": student_id, **request.model_dump()})
        replay_key = (key.key_id, "end", idempotency_key) if idempotency_key else None
        if replay_key is not None and (replay := state.replays.get(replay_key)) is not None:
            return _replayed(replay, fingerprint, idempotency_key)
        result = Session.of(await call(lambda labs: labs.end(student_id, request.reason)))
        if replay_key is not None:
            state.replays.put(replay_key, fingerprint, 202, result.model_dump(mode="json"))
        return result

    @app.get("/v1/sessions", response_model=SessionPage, tags=["sessions"], responses=_ERRORS)
    async def list_sessions(
        key: App,
        phase: Annotated[Phase | None, Query(description="only sessions in this phase (default: running)")] = None,
        lab: Annotated[str | None, Query(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)] = None,
        page_token: Annotated[str | None, Query(max_length=4096)] = None,
        page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    ) -> SessionPage:
        """Sessions from Visibility, one page at a time."""
        query = f"WorkflowType = '{WORKFLOW_NAME}'"
        query += f" AND LabPhase = '{phase.value}'" if phase else " AND ExecutionStatus = 'Running'"
        if lab:
            query += f" AND LabName = '{lab}'"
        token = _decode_token(page_token)

        async def page(labs: LabClient) -> SessionPage:
            try:
                iterator = labs.client.list_workflows(query, page_size=page_size, next_page_token=token)
                await iterator.fetch_next_page()
            except RPCError as exc:
                if token is not None and "token" in exc.message.lower():
                    raise ProblemError(422, "Invalid request", f"page_token: {exc.message}", field="page_token",
                                       value=page_token, kind="invalid-request") from None
                raise
            items = []
            for execution in iterator.current_page or []:
                attrs = execution.typed_search_attributes
                items.append(SessionSummary(
                    student_id=attrs.get(search_attributes.STUDENT_ID), lab=attrs.get(search_attributes.LAB_NAME),
                    phase=attrs.get(search_attributes.LAB_PHASE), started_at=execution.start_time,
                    closed_at=execution.close_time,
                    status=execution.status.name.lower() if execution.status else "unknown",
                ))
            next_token = iterator.next_page_token
            return SessionPage(items=items,
                               next_page_token=base64.urlsafe_b64encode(next_token).decode() if next_token else None)

        return await call(page)

    # --- catalog and pool --------------------------------------------------------------------------

    @app.get("/v1/labs", response_model=list[LabView], tags=["catalog"], responses=_ERRORS)
    async def list_labs(key: App) -> list[LabView]:
        """The lab catalog."""
        labs = await _catalog_client(state)
        return [LabView.of(lab) for _, lab in sorted(labs.catalog.labs.items())]

    @app.get("/v1/node-classes", response_model=list[NodeClassView], tags=["catalog"], responses=_ERRORS)
    async def list_node_classes(key: App) -> list[NodeClassView]:
        """The node classes labs are made of."""
        labs = await _catalog_client(state)
        return [NodeClassView.of(cls) for _, cls in sorted(labs.catalog.node_classes.items())]

    @app.get("/v1/pool", tags=["admin"], responses=_ERRORS | {403: _ERRORS[403]})
    async def get_pool(key: Admin) -> dict[str, Any]:
        """The warm pool per node class, VM/memory/NodePort capacity and the capacity queue (admin)."""
        from labrador.pool_report import pool_status  # the same answer as `labrador pool status --json`

        result: dict[str, Any] = await call(lambda labs: pool_status(labs.client, labs.settings))
        return json.loads(json.dumps(result, default=str))

    # --- admin bulk actions --------------------------------------------------------------------------

    @app.post("/v1/admin/end", status_code=202, tags=["admin"],
              response_model=AdminEndStarted | AdminEndPreview, responses=_ERRORS | {403: _ERRORS[403]})
    async def admin_end(body: AdminEndRequest, key: Admin, idempotency_key: IdempotencyKey = None) -> Any:
        """End every running lab of a lab, of a node class, or all (or one student's, with `force` for a stuck
        session), with a reason the students see: a BulkEnd workflow (202). `dry_run`: 200 with a count and a
        page of the sessions that would be ended."""
        from labrador import admin

        async def run(labs: LabClient) -> Any:
            chosen = admin.selector(labs.catalog, lab=body.lab, node_class=body.node_class, every=body.all,
                                    student_id=body.student_id)
            if body.dry_run:
                page = await admin.preview(labs.client, chosen, page_token=body.page_token)
                return JSONResponse(AdminEndPreview(
                    count=page.count, next_page_token=page.next_page_token,
                    sessions=[AdminEndTarget(**s.model_dump()) for s in page.sessions],
                ).model_dump(mode="json"), status_code=200)
            request_id = _hash(f"{key.key_id}:{idempotency_key}")[:24] if idempotency_key else None
            workflow_id = await admin.start_bulk_end(labs.client, settings, chosen, body.reason, force=body.force,
                                                     parallelism=body.parallelism, request_id=request_id)
            return AdminEndStarted(bulk_id=workflow_id.removeprefix(admin.BULK_END_PREFIX), workflow_id=workflow_id,
                                   selector=chosen.description)

        return await call(run)

    @app.get("/v1/admin/end/{bulk_id}", response_model=AdminEndStatus, tags=["admin"],
             responses=_SESSION_ERRORS | {403: _ERRORS[403]})
    async def admin_end_status(bulk_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9-]{1,64}$")],
                               key: Admin) -> AdminEndStatus:
        """A bulk end's progress: running, then its totals."""
        from labrador import admin

        async def status(labs: LabClient) -> AdminEndStatus:
            try:
                found = await admin.bulk_status(labs.client, admin.BULK_END_PREFIX + bulk_id)
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    raise ProblemError(404, "Not found", f"bulk_id: {bulk_id!r} is not a bulk end", field="bulk_id",
                                       value=bulk_id) from None
                raise
            result = found.result
            return AdminEndStatus(bulk_id=bulk_id, status=found.status, ended=result.ended if result else None,
                                  failed=result.failed if result else None,
                                  failures=result.failures if result else [])

        return await call(status)

    return app


# --- helpers ---------------------------------------------------------------------------------------


async def _catalog_client(state: ApiState) -> LabClient:
    try:
        labs = await state.labs()
        labs.catalog  # noqa: B018 (loads it, or raises the catalog's error)
        return labs
    except (LabError, TemporalUnreachable) as exc:
        raise from_lab_error(exc) from None


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _fingerprint(data: dict[str, Any]) -> str:
    return _hash(json.dumps(data, sort_keys=True, default=str))


def _replayed(replay: Any, fingerprint: str, idempotency_key: str | None) -> JSONResponse:
    if replay.fingerprint != fingerprint:
        raise ProblemError(422, "Invalid request", "Idempotency-Key: already used for a different request",
                           field="Idempotency-Key", value=idempotency_key, kind="idempotency-key-reused")
    return JSONResponse(replay.body, status_code=replay.status, headers={"Idempotency-Replayed": "true"})


async def _started_by(labs: LabClient, student_id: str, expected: dict[str, str]) -> bool:
    """Whether the student's current run was started by the caller (and with the same Idempotency-Key)."""
    try:
        description = await labs.client.get_workflow_handle(session_workflow_id(student_id)).describe()
        memo = await description.memo()
    except RPCError as exc:
        raise labs._rpc_error(exc, student_id) from exc
    return all(memo.get(name) == value for name, value in expected.items())


async def _wait(labs: LabClient, student_id: str, ready: WaitReadyResult | None, deadline: float) -> WaitReadyResult:
    while not (ready and (ready.ready or ready.phase in TERMINAL_PHASES)):
        left = deadline - time.monotonic()
        ready = await labs.wait_ready(student_id, timedelta(seconds=max(0.0, min(POLL, left))))
        if left <= 0:
            break
    return ready


def _started(status: Any, ready: WaitReadyResult | None) -> StartedSession:
    ssh = None
    if ready is not None and ready.ready and ready.endpoint is not None and ready.private_key is not None:
        ssh = SshAccess(host=ready.endpoint.host, port=ready.endpoint.port, username=ready.endpoint.username,
                        private_key=ready.private_key, deadline=ready.deadline)
    return StartedSession(session=Session.of(status), ready=ssh is not None, ssh=ssh)


def _decode_token(token: str | None) -> bytes | None:
    if token is None:
        return None
    try:
        return base64.urlsafe_b64decode(token.encode())
    except (binascii.Error, ValueError):
        raise ProblemError(422, "Invalid request", "page_token: not a token from a previous page",
                           field="page_token", value=token, kind="invalid-request") from None
