"""How the session workflow fails, and how an activity's failure is read."""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ApplicationError

# temporalio 1.35 raises a local activity's final failure as the bare ApplicationError (no ActivityError
# around it, as a regular activity's has): code that handles a local call's failure catches both.
CALL_FAILED = (ActivityError, ApplicationError)


class SessionFailed(Exception):
    """The lab cannot go on; `reason` becomes the session's reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


def cause_of(error: BaseException) -> str:
    """The innermost message of an activity failure (the port's clear message)."""
    while isinstance(error, ActivityError) and error.cause is not None:
        error = error.cause
    return getattr(error, "message", None) or str(error) or type(error).__name__
