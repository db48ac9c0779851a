"""What one session knows (set in `__init__`), and the bookkeeping every part of it shares: phases,
search attributes, the details line, the per-node fan-out.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from cluster.models import SessionRef, SshEndpoint
    from cluster.naming import session_id
    from workflows import search_attributes
    from workflows.capacity.gate import CapacityGate
    from workflows.models import (
        BoundNode,
        CheckReport,
        LabSessionInput,
        Phase,
        PrepareNodesResult,
        SessionCredentials,
    )
    from workflows.session.failures import SessionFailed
    from workflows.session.patches import LEAN_START_PATCH, QUIET_FLOW

# QUIET_FLOW: a phase before ready reaches Visibility (`LabPhase`, `lab list --phase`) once it has
# lasted `timings.phase_shown_after` (5 s). Most last less within a start (a warm one is ready in
# ~100 ms) and each upsert is a Visibility write, so a quick start shows `running` only. The timer
# rides on the start's own workflow tasks and the next phase shown cancels it: a phase that lasts (a
# queue, minutes of setup) costs one workflow task more.
PASSING_PHASES = frozenset({
    Phase.QUEUED, Phase.CLAIMING, Phase.PROVISIONING, Phase.WIRING, Phase.SETTING_UP, Phase.EXPOSING,
})


class SessionState:
    """The session's state; the other parts of the workflow are mixins on top of it."""

    def __init__(self, request: LabSessionInput) -> None:
        info = workflow.info()
        self._input = request
        self._lab = request.lab
        self._session = SessionRef(
            session_id=session_id(request.student_id, info.run_id),
            workflow_id=info.workflow_id,
            run_id=info.run_id,
        )
        self._started_at = workflow.now()
        self._phase = Phase.CLAIMING
        self._phase_since = self._started_at
        self._phase_seconds: dict[str, float] = {}
        self._nodes: list[BoundNode] = []
        self._nodes_ready = 0  # of the current readiness wait (status: "provisioning n/m nodes ready")
        self._credentials: SessionCredentials | None = None
        self._prepared: PrepareNodesResult | None = None  # CLAIM_PREPARES_FLOW: prepared with the claim
        self._asked_with_claim = False  # CLAIM_ASKS_FLOW: the claim's call asked the capacity broker
        self._endpoint: SshEndpoint | None = None
        self._ready_at: datetime | None = None
        self._deadline: datetime | None = None
        self._extensions_used = 0
        self._picked_up = False
        self._set_up = False
        self._end_reason: str | None = None
        self._health_problem: str | None = None
        self._health_failure: SessionFailed | None = None
        self._last_check: CheckReport | None = None
        self._reason: str | None = None
        self._detail: str | None = None
        self._teardown_problems: list[str] = []
        self._preparation: asyncio.Task[None] | None = None
        # One check at a time per lab (concurrent `check` messages join it), one start per interval.
        self._check_task: asyncio.Task[CheckReport] | None = None
        self._check_started_at: datetime | None = None
        # The pool's capacity queue (workflows/capacity.py): only cold provisions wait in it.
        # Its notices arrive by the `capacity_notice` signal declared on the workflow (SessionMessages):
        # registering a handler per run inspects the handler's signature every time.
        self._capacity = CapacityGate(register=False)
        # Bumped whenever something the waiting loop cares about changes (end, extend, pick-up, health).
        self._version = 0
        self._seen_version = 0
        # Pause/resume/reset (one at a time: `_busy` names the one under way).
        self._busy: str | None = None
        self._paused_at: datetime | None = None
        self._phase_before_pause = Phase.RUNNING
        self._pauses_used = 0
        self._paused_total = timedelta(0)
        self._resets_used = 0
        self._reset_task: asyncio.Task[None] | None = None
        # While a reset runs, the generation that is not `self._session` (the old nodes while the new
        # ones are prepared); teardown releases it too, so an end mid-reset leaks nothing.
        self._other_generation: SessionRef | None = None
        self._event_starts: list[asyncio.Task[None]] = []  # webhook deliveries being started (never delivered here)
        self._expiring_sent_for: datetime | None = None
        # LEAN_START_PATCH: search attributes as Visibility has them (the client set these at the start)
        # and the values to upsert once the current workflow task has run (`_flush_search_attributes`).
        self._lean: bool | None = None
        shown = info.typed_search_attributes
        self._attributes_shown: dict[str, str | None] = {
            key.name: shown.get(key) for key in search_attributes.ALL
        }
        self._attributes_wanted: dict[str, str] = {}
        self._local_calls = 0  # local activities in flight (workflows/local_calls.py)
        self._show_later: asyncio.Task[None] | None = None  # QUIET_FLOW: a passing phase, shown if it lasts

    def _suspended(self) -> bool:
        """Paused, or a pause/resume/reset under way: no timers of the lab, no health verdicts."""
        return self._busy is not None or self._phase == Phase.PAUSED

    def _pause_expires_at(self) -> datetime:
        assert self._paused_at is not None
        limits = self._input.pause
        return self._paused_at + min(limits.longest, limits.total - self._paused_total)

    def _phase_shown(self) -> str:
        return f"{self._phase}, {self._busy}" if self._busy else str(self._phase)

    def _enter(self, phase: Phase, *, first: bool = False) -> None:
        now = workflow.now()
        if not first:
            spent = (now - self._phase_since).total_seconds()
            self._phase_seconds[self._phase] = self._phase_seconds.get(self._phase, 0.0) + spent
        self._phase, self._phase_since = phase, now
        if self._lean_start():
            self._want_attribute(search_attributes.LAB_PHASE.name, phase.value)
            if first:
                self._want_attribute(search_attributes.STUDENT_ID.name, self._input.student_id)
                self._want_attribute(search_attributes.LAB_NAME.name, self._lab.name)
        else:
            updates = [search_attributes.LAB_PHASE.value_set(phase.value)]
            if first:
                updates += [
                    search_attributes.STUDENT_ID.value_set(self._input.student_id),
                    search_attributes.LAB_NAME.value_set(self._lab.name),
                ]
            workflow.upsert_search_attributes(updates)
        self._update_details()

    def _lean_start(self) -> bool:
        if self._lean is None:
            self._lean = self._quiet_flow() or workflow.patched(LEAN_START_PATCH)
        return self._lean

    def _quiet_flow(self) -> bool:
        return self._input.flow >= QUIET_FLOW

    def _want_attribute(self, name: str, value: str) -> None:
        """Upsert once the workflow task's code has settled: after the conditions it unblocks have run
        (`_settled`), and after the last local activity in flight (a task lasts while they run, one
        activation per answer). A start passes several phases in one task; Visibility needs the last."""
        if not self._attributes_wanted:
            self._flush_when_settled()
        self._attributes_wanted[name] = value

    def _flush_when_settled(self) -> None:
        task = asyncio.create_task(self._settled())
        task.add_done_callback(lambda done: None if done.cancelled() else self._flush_search_attributes())

    @staticmethod
    async def _settled() -> None:
        # Conditions are checked once nothing else is ready; two passes let what the first unblocks
        # (the preparation's end, then the `wait_ready` answer it lets through) run first.
        for _ in range(2):
            await workflow.wait_condition(lambda: True)

    def _local_call_started(self) -> None:
        self._local_calls += 1

    def _local_call_ended(self) -> None:
        self._local_calls -= 1
        if not self._local_calls and self._attributes_wanted:
            self._flush_when_settled()

    def _flush_search_attributes(self, *, last: bool = False) -> None:
        if self._local_calls and not last:
            return  # the task goes on: `_local_call_ended` calls again
        wanted, self._attributes_wanted = self._attributes_wanted, {}
        changed = {name: value for name, value in wanted.items() if self._attributes_shown.get(name) != value}
        phase_name = search_attributes.LAB_PHASE.name
        if not last and self._quiet_flow() and changed.get(phase_name, self._phase) in PASSING_PHASES:
            # A phase before ready is held back until it has lasted (`_show_if_it_lasts`); the clock
            # runs from the first phase held.
            if changed.pop(phase_name, None) is not None and self._show_later is None:
                self._show_later = asyncio.create_task(self._show_if_it_lasts())
        elif self._show_later is not None:  # a phase shown now: the one that passed need not be
            self._show_later.cancel()
            self._show_later = None
        if not changed:
            return
        keys = {key.name: key for key in search_attributes.ALL}
        workflow.upsert_search_attributes([keys[name].value_set(value) for name, value in changed.items()])
        self._attributes_shown.update(changed)

    async def _show_if_it_lasts(self) -> None:
        await workflow.sleep(self._input.timings.phase_shown_after)
        self._show_later = None
        self._attributes_wanted[search_attributes.LAB_PHASE.name] = self._phase.value
        self._flush_search_attributes(last=True)  # now, even with a local activity in flight

    def _update_details(self) -> None:
        parts = [f"**{self._phase}**", f"student {self._input.student_id}", f"lab {self._lab.name}",
                 f"session {self._session.session_id}"]
        if self._deadline is not None and self._phase in (Phase.READY, Phase.RUNNING):
            parts.append(f"until {self._deadline:%Y-%m-%d %H:%M} UTC ({self._extensions_used} extensions)")
        if self._phase == Phase.PAUSED and self._paused_at is not None:
            parts.append(f"paused since {self._paused_at:%H:%M} UTC, ends at {self._pause_expires_at():%H:%M} UTC"
                         + (f" ({self._busy})" if self._busy else ""))
        if self._health_problem:
            parts.append(f"⚠ {self._health_problem}")
        if self._reason and self._phase in (Phase.ENDED, Phase.EXPIRED, Phase.FAILED, Phase.TEARING_DOWN):
            parts.append(f"reason: {self._reason}")
        workflow.set_current_details(" · ".join(parts))

    def _node_named(self, name: str) -> BoundNode:
        return next(n for n in self._nodes if n.name == name)

    @staticmethod
    async def _all(coroutines: Any) -> list[Any]:
        """Run per-node steps in parallel; the first failure cancels the others and is raised."""
        tasks = [asyncio.create_task(c) for c in coroutines]
        if not tasks:
            return []
        await workflow.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None), None)
        if failed is not None:
            for task in tasks:
                task.cancel()
            await workflow.wait(tasks)
            raise failed.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
