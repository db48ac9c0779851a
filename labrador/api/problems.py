"""Errors as RFC 9457 `application/problem+json`, with the same refusals as the CLI.

LabClient's refusals say "field: 'value' ..." (cluster.naming, labrador.client); that prefix becomes
the problem's `field` and `value`. Bad input is 422 (or 400 for an unreadable body), a state that does
not allow the request is 409, no lab is 404, Temporal unreachable is 503 (with Retry-After).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from labrador.api.models import Problem
from labrador.client import LabError, NoSession, SessionConflict, TemporalUnreachable

log = logging.getLogger("labrador.api")
PROBLEM_JSON = "application/problem+json"
_TYPES = "https://labrador.dev/problems/"
# Message prefixes of LabClient refusals that are about the request itself (API field names).
_INPUT_FIELDS = {"student": "student_id", "lab": "lab", "phase": "phase", "wait": "wait_seconds",
                 "node_class": "node_class", "selector": "selector", "reason": "reason", "page_token": "page_token"}
_PREFIX = re.compile(r"^(?P<field>[a-z_ ]+): (?:'(?P<value>[^']*)')?")


class ProblemError(Exception):
    def __init__(self, status: int, title: str, detail: str, *, field: str | None = None, value: Any = None,
                 headers: dict[str, str] | None = None, kind: str | None = None) -> None:
        super().__init__(detail)
        self.problem = Problem(
            type=_TYPES + (kind or title.lower().replace(" ", "-")), title=title, status=status,
            detail=" ".join(detail.split()), field=field, value=None if value is None else str(value)[:200],
        )
        self.headers = headers or {}


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(problem.model_dump(exclude_none=True), status_code=problem.status, media_type=PROBLEM_JSON,
                        headers=headers)


def from_lab_error(exc: Exception) -> ProblemError:
    """The CLI's refusal classes as HTTP statuses."""
    message = str(exc)
    match = _PREFIX.match(message)
    prefix = match.group("field") if match else None
    value = match.group("value") if match else None
    if isinstance(exc, TemporalUnreachable):
        return ProblemError(503, "Temporal unreachable", message, headers={"Retry-After": "5"})
    if isinstance(exc, SessionConflict):
        return ProblemError(409, "Lab already running", message, field="student_id", value=value)
    if isinstance(exc, NoSession):
        return ProblemError(404, "No lab running", message, field="student_id", value=value)
    if prefix in _INPUT_FIELDS:
        return ProblemError(422, "Invalid request", message, field=_INPUT_FIELDS[prefix], value=value,
                            kind="invalid-request")
    if isinstance(exc, LabError) and message.startswith("catalog "):
        return ProblemError(500, "Catalog invalid", message)
    # extend/check refusals ("extend: the lab is not running (phase ready)"): the state, not the request.
    return ProblemError(409, "Refused in this state", message, kind="state-conflict")


async def problem_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    exc.problem.instance = request.url.path
    return problem_response(exc.problem, exc.headers)


async def validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    error = exc.errors()[0]
    location = [str(part) for part in error.get("loc", ())]
    where = location[0] if location else "body"
    field = ".".join(location[1:]) or where
    if error.get("type") == "json_invalid":
        problem = Problem(type=_TYPES + "invalid-body", title="Invalid body", status=400,
                          detail=f"body: not valid JSON ({error.get('msg')})", instance=request.url.path)
        return problem_response(problem)
    raw = error.get("input")
    value = None if raw is None or isinstance(raw, dict | list) else str(jsonable_encoder(raw))[:200]
    shown = f" (got {value!r})" if value is not None else ""
    problem = Problem(type=_TYPES + "invalid-request", title="Invalid request", status=422,
                      detail=f"{field}: {error.get('msg')}{shown}", instance=request.url.path, field=field,
                      value=value)
    return problem_response(problem)


async def http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
    problem = Problem(title=title, status=exc.status_code, detail=str(exc.detail), instance=request.url.path)
    return problem_response(problem, dict(exc.headers or {}))


async def internal_handler(request: Request, exc: Exception) -> JSONResponse:
    # No traceback (nor anything the exception holds) reaches the caller; the log has the type only.
    log.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    problem = Problem(title="Internal error", status=500, detail=f"internal error ({type(exc).__name__})",
                      instance=request.url.path)
    return problem_response(problem)
