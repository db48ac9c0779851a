"""The session's webhook events: started as detached delivery workflows (workflows/webhooks.py)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.session.patches import WEBHOOK_PATCH, session_patched
    from workflows.session.state import SessionState
    from workflows.webhooks import EventType, WebhookEvent, emit


class SessionEvents(SessionState):
    """Emits lab.* and pool.* events; the story never waits for a receiver."""

    def _emit(self, kind: EventType, *, suffix: str = "", event_id: str | None = None, **data: Any) -> None:
        """A webhook event: its delivery workflow is started detached (workflows/webhooks.py); the story
        never waits for a receiver. Only with events configured, and behind WEBHOOK_PATCH."""
        if self._input.events is None or not session_patched(WEBHOOK_PATCH):
            return
        if kind != EventType.POOL_LOW:
            data = {"student_id": self._input.student_id, "session_id": self._session.session_id,
                    "lab": self._lab.name, "phase": str(self._phase), **data}
        event = WebhookEvent(
            id=event_id or f"{self._session.session_id}.{kind.value}" + (f".{suffix}" if suffix else ""),
            type=kind, timestamp=workflow.now(), data=data,
        )
        self._event_starts.append(asyncio.create_task(emit(event)))

    def _expiring_at(self) -> datetime | None:
        """When lab.expiring is due for the current deadline (None: events off or already sent)."""
        events = self._input.events
        if events is None or self._deadline is None or self._expiring_sent_for == self._deadline:
            return None
        if not session_patched(WEBHOOK_PATCH):
            return None
        return self._deadline - events.expiring_before

    async def _events_started(self) -> None:
        """Before the run completes: the deliveries it emitted have started (they then outlive it)."""
        if self._event_starts:
            await asyncio.gather(*self._event_starts)
            self._event_starts.clear()
