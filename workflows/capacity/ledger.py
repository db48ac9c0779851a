"""The capacity accounting, pure (no Temporal): who may add VMs under the global cap.

    usage = the cluster's VMs at its last reading + every promise not yet seen in a reading

A *promise* is room granted whose nodes may not exist yet: a session's cold nodes, a refill's new
pool nodes. A promise counts until a cluster reading shows its nodes (then they count as cluster
VMs), or, after its holder released it or ended, until the next reading (what the holder created
before is in that reading). Nothing is kept per running lab: once its nodes are seen, a lab is just
part of the cluster count, and its end shows in the next reading. So usage never under-counts:
every node either was in the last reading or belongs to a promise still counted.

The queue is FIFO by ticket: the head is granted as soon as it fits, then the next; a later small
request never overtakes an earlier big one. A position is 1 + the waiting tickets before it (bisect
over the sorted tickets: O(log n) when read, nothing pushed to the waiters).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime

from workflows.capacity.models import (
    BrokerSettings,
    BrokerState,
    CapacityLimits,
    CapacityNotice,
    CapacityRequest,
    CapacityState,
    CapacityUsage,
    CapacityUsageInput,
    PoolReservation,
    PoolReservationResult,
    Promise,
    QueueEntry,
    Waiting,
    pack,
    unpack,
)


def request_key(workflow_id: str, run_id: str) -> str:
    return f"{workflow_id}/{run_id}"


@dataclass
class Decision:
    granted: list[Waiting]
    refused: list[tuple[Waiting, str]]


class Ledger:
    def __init__(self, state: BrokerState) -> None:
        self.limits = state.limits
        self.settings: BrokerSettings = state.settings
        self.next_ticket = state.next_ticket
        self.served = state.served
        self.cluster_vms = state.cluster_vms
        self.cluster_memory = state.cluster_memory_bytes
        self.summary_at = state.summary_at
        self.liveness_cursor = state.liveness_cursor
        self._waiting: dict[int, Waiting] = {}  # ticket -> entry, in ticket order
        self._tickets: list[int] = []  # sorted, for positions
        self._by_key: dict[str, int] = {}
        self._by_workflow: dict[str, str] = {}  # workflow ID -> key of its latest entry or promise
        self.promises: dict[str, Promise] = {p.key: p for p in state.promises}
        for promise in state.promises:
            self._by_workflow[promise.workflow_id] = promise.key
        for entry in unpack(state.queue):
            self._append(entry)
        # Something changed that a cluster reading would show (a release, a holder gone).
        self.stale = False

    def state(self) -> BrokerState:
        return BrokerState(
            limits=self.limits, settings=self.settings, next_ticket=self.next_ticket, served=self.served,
            queue=pack(list(self._waiting.values())), promises=list(self.promises.values()),
            cluster_vms=self.cluster_vms, cluster_memory_bytes=self.cluster_memory, summary_at=self.summary_at,
            liveness_cursor=self.liveness_cursor,
        )

    # --- the queue ----------------------------------------------------------------------------------

    def _append(self, entry: Waiting) -> None:
        self._waiting[entry.ticket] = entry
        self._tickets.append(entry.ticket)
        self._by_key[request_key(entry.workflow_id, entry.run_id)] = entry.ticket
        self._by_workflow[entry.workflow_id] = request_key(entry.workflow_id, entry.run_id)

    def _remove(self, ticket: int) -> Waiting | None:
        entry = self._waiting.pop(ticket, None)
        if entry is None:
            return None
        index = bisect.bisect_left(self._tickets, ticket)
        del self._tickets[index]
        self._by_key.pop(request_key(entry.workflow_id, entry.run_id), None)
        return entry

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    def head(self) -> Waiting | None:
        return next(iter(self._waiting.values()), None)

    def waiting(self, key: str) -> Waiting | None:
        ticket = self._by_key.get(key)
        return None if ticket is None else self._waiting[ticket]

    def key_of(self, workflow_id: str, run_id: str | None) -> str:
        if run_id:
            return request_key(workflow_id, run_id)
        return self._by_workflow.get(workflow_id, request_key(workflow_id, ""))

    def position(self, key: str) -> int | None:
        ticket = self._by_key.get(key)
        return None if ticket is None else bisect.bisect_left(self._tickets, ticket) + 1

    def entries(self, limit: int | None = None) -> list[Waiting]:
        values = iter(self._waiting.values())
        return [e for _, e in zip(range(limit if limit is not None else len(self._waiting)), values, strict=False)]

    def notice(self, key: str) -> CapacityNotice:
        """What a session is told about itself now."""
        if key in self.promises and not self.promises[key].settling:
            return CapacityNotice(granted=True, served=self.served)
        ticket = self._by_key.get(key)
        if ticket is None:
            return CapacityNotice(refused="not known to the capacity broker (released or never asked)")
        return CapacityNotice(position=self.position(key), ticket=ticket, served=self.served)

    # --- usage --------------------------------------------------------------------------------------

    @property
    def known(self) -> bool:
        """Usage is known once the cluster was read at least once."""
        return self.summary_at is not None

    def usage(self) -> tuple[int, int]:
        vms = self.cluster_vms + sum(p.pending_vms for p in self.promises.values())
        memory = self.cluster_memory + sum(p.pending_memory_bytes for p in self.promises.values())
        return vms, memory

    def _fits(self, vms: int, memory: int, extra_vms: int, extra_memory: int) -> bool:
        return vms + extra_vms <= self.limits.max_vms and memory + extra_memory <= self.limits.max_memory_bytes

    def head_blocked(self) -> bool:
        head = self.head()
        if head is None:
            return False
        vms, memory = self.usage()
        return not self._fits(vms, memory, head.new_vms, head.new_memory_bytes)

    def too_big(self, vms: int, memory: int) -> str | None:
        if vms > self.limits.max_vms or memory > self.limits.max_memory_bytes:
            return (
                f"the lab needs {vms} VMs / {memory} bytes, more than the platform's cap of "
                f"{self.limits.max_vms} VMs / {self.limits.max_memory_bytes} bytes"
            )
        return None

    # --- messages -----------------------------------------------------------------------------------

    def ask(self, request: CapacityRequest, now: datetime, notify: bool) -> CapacityNotice:
        """Queue a session (idempotent: asking again answers where it stands), then decide."""
        self.limits = request.limits
        key = request_key(request.session.workflow_id, request.session.run_id)
        if key in self.promises or key in self._by_key:
            return self.notice(key)
        reason = self.too_big(request.vms, request.memory_bytes)
        if reason is not None:
            return CapacityNotice(refused=reason, served=self.served)
        new_vms = request.vms if request.new_vms is None else request.new_vms
        new_memory = request.memory_bytes if request.new_memory_bytes is None else request.new_memory_bytes
        self._append(Waiting(
            ticket=self.next_ticket, workflow_id=request.session.workflow_id, run_id=request.session.run_id,
            session_id=request.session.session_id, vms=request.vms, memory_bytes=request.memory_bytes,
            new_vms=new_vms, new_memory_bytes=new_memory, since=now, notify=notify,
        ))
        self.next_ticket += 1
        return self.notice(key)

    def decide(self) -> Decision:
        """Grant from the head while it fits (FIFO); refuse what can never fit under the cap."""
        decision = Decision(granted=[], refused=[])
        if not self.known:
            return decision
        vms, memory = self.usage()
        while self._waiting:
            head = self.head()
            assert head is not None
            reason = self.too_big(head.vms, head.memory_bytes)
            if reason is not None:
                decision.refused.append((head, reason))
            elif self._fits(vms, memory, head.new_vms, head.new_memory_bytes):
                vms += head.new_vms
                memory += head.new_memory_bytes
                key = request_key(head.workflow_id, head.run_id)
                self.promises[key] = Promise(
                    key=key, session_id=head.session_id, workflow_id=head.workflow_id, run_id=head.run_id,
                    vms=head.vms, memory_bytes=head.memory_bytes, pending_vms=head.new_vms,
                    pending_memory_bytes=head.new_memory_bytes,
                )
                self._by_workflow[head.workflow_id] = key
                decision.granted.append(head)
            else:
                break
            self._remove(head.ticket)
            self.served += 1
        return decision

    def release(self, workflow_id: str, run_id: str) -> bool:
        """The holder is done (or leaves the queue). A promise settles at the next reading. True when
        something was held."""
        key = request_key(workflow_id, run_id)
        held = False
        ticket = self._by_key.get(key)
        if ticket is not None:
            self._remove(ticket)
            held = True
        promise = self.promises.get(key)
        if promise is not None and not promise.settling:
            self.promises[key] = promise.model_copy(update={"settling": True})
            held = True
        self.stale = True  # its nodes are gone: the next reading shows the room (asked at once if blocked)
        return held

    def forget_waiting(self, workflow_id: str, run_id: str) -> None:
        """A queued run that cannot be reached any more (ended without leaving the queue)."""
        ticket = self._by_key.get(request_key(workflow_id, run_id))
        if ticket is not None:
            self._remove(ticket)

    def ended(self, keys: set[str]) -> None:
        """Runs that are not running any more: out of the queue; their promises settle."""
        for key in keys:
            ticket = self._by_key.get(key)
            if ticket is not None:
                self._remove(ticket)
            promise = self.promises.get(key)
            if promise is not None and not promise.settling:
                self.promises[key] = promise.model_copy(update={"settling": True})
                self.stale = True

    def reserve_pool(self, reservation: PoolReservation, now: datetime) -> PoolReservationResult:
        self.limits = reservation.limits
        if self._waiting:
            return PoolReservationResult(reason=f"{len(self._waiting)} session(s) queued for capacity go first")
        if not self.known:
            return PoolReservationResult(reason="capacity unknown (the cluster was not read yet)")
        holder = reservation.holder
        key = (
            f"pool/{request_key(holder.workflow_id, holder.run_id)}" if holder is not None
            else f"pool/anonymous/{reservation.nodes[0].node_id if reservation.nodes else ''}"
        )
        existing = self.promises.get(key)
        held = set(existing.nodes) if existing is not None else set()
        vms, memory = self.usage()
        granted: list[str] = []
        new_nodes: list[str] = []
        new_memory = 0
        for hold in reservation.nodes:
            if hold.node_id in held:
                granted.append(hold.node_id)
                continue
            if not self._fits(vms, memory, 1, hold.memory_bytes):
                break
            vms += 1
            memory += hold.memory_bytes
            new_memory += hold.memory_bytes
            granted.append(hold.node_id)
            new_nodes.append(hold.node_id)
        if new_nodes:
            base = existing or Promise(
                key=key, workflow_id=holder.workflow_id if holder else "", run_id=holder.run_id if holder else "",
                vms=0, memory_bytes=0, pending_vms=0, pending_memory_bytes=0,
                expires_at=None if holder is not None else now + self.settings.pool_hold_ttl,
            )
            self.promises[key] = base.model_copy(update={
                "nodes": [*base.nodes, *new_nodes], "vms": base.vms + len(new_nodes),
                "memory_bytes": base.memory_bytes + new_memory, "pending_vms": base.pending_vms + len(new_nodes),
                "pending_memory_bytes": base.pending_memory_bytes + new_memory, "settling": False,
            })
        reason = None
        if len(granted) < len(reservation.nodes):
            reason = f"capacity cap: {vms}/{self.limits.max_vms} VMs in use or promised"
        return PoolReservationResult(granted=granted, reason=reason)

    # --- the cluster reading ------------------------------------------------------------------------

    def usage_request(self) -> tuple[CapacityUsageInput, set[str]]:
        """What to ask the cluster, and the promises settling when it is asked (those the answer covers)."""
        sessions = sorted({p.session_id for p in self.promises.values() if p.session_id and not p.settling})
        nodes = sorted({n for p in self.promises.values() if not p.settling for n in p.nodes})
        settling = {k for k, p in self.promises.items() if p.settling}
        self.stale = False
        return CapacityUsageInput(sessions=sessions, nodes=nodes), settling

    def apply_usage(self, usage: CapacityUsage, settled: set[str], now: datetime) -> None:
        """A fresh reading: cluster counts replace the old ones; promises whose nodes it shows, and
        those that were settling when it was asked, are done."""
        self.cluster_vms, self.cluster_memory = usage.vms, usage.memory_bytes
        self.summary_at = now
        present_nodes = set(usage.nodes)
        for key, promise in list(self.promises.items()):
            if key in settled:
                del self.promises[key]
                continue
            if promise.settling:
                continue  # released while the reading ran: the next one settles it
            if promise.nodes:
                remaining = [n for n in promise.nodes if n not in present_nodes]
                share = promise.memory_bytes // max(1, len(promise.nodes))
                pending_vms = len(remaining)
                pending_memory = share * len(remaining)
                if promise.expires_at is not None and promise.expires_at < now:
                    remaining, pending_vms, pending_memory = [], 0, 0
            else:
                seen = usage.sessions.get(promise.session_id or "")
                pending_vms = max(0, promise.vms - (seen.vms if seen else 0))
                pending_memory = max(0, promise.memory_bytes - (seen.memory_bytes if seen else 0))
                remaining = []
            if pending_vms == 0 and pending_memory == 0:
                del self.promises[key]
            else:
                self.promises[key] = promise.model_copy(update={
                    "pending_vms": pending_vms, "pending_memory_bytes": pending_memory,
                    "nodes": remaining if promise.nodes else [],
                })

    # --- liveness -----------------------------------------------------------------------------------

    def liveness_window(self) -> list[tuple[str, str, str]]:
        """(workflow ID, run ID, session ID) of every promise holder and of a rotating window of waiters."""
        refs = [(p.workflow_id, p.run_id, p.session_id or p.key) for p in self.promises.values()
                if p.workflow_id and not p.settling]
        batch = self.settings.liveness_batch
        after = [t for t in self._tickets if t > self.liveness_cursor][:batch]
        if len(after) < batch:
            after += [t for t in self._tickets if t <= self.liveness_cursor][: batch - len(after)]
        if after:
            self.liveness_cursor = after[-1]
        for ticket in after:
            entry = self._waiting[ticket]
            refs.append((entry.workflow_id, entry.run_id, entry.session_id))
        return refs

    # --- reading it ---------------------------------------------------------------------------------

    def view(self, limit: int) -> CapacityState:
        vms = sum(p.pending_vms for p in self.promises.values())
        memory = sum(p.pending_memory_bytes for p in self.promises.values())
        queue = [
            QueueEntry(position=i + 1, session_id=e.session_id, workflow_id=e.workflow_id, vms=e.vms,
                       memory_bytes=e.memory_bytes, waiting_since=e.since, ticket=e.ticket)
            for i, e in enumerate(self.entries(limit))
        ]
        return CapacityState(
            limits=self.limits, queue=queue, queue_length=self.queue_length, served=self.served,
            cluster_vms=self.cluster_vms, cluster_memory_bytes=self.cluster_memory, promised_vms=vms,
            promised_memory_bytes=memory, pool_holds=sum(len(p.nodes) for p in self.promises.values()),
            summary_at=self.summary_at, leased_vms=vms, leased_memory_bytes=memory,
            sessions_holding=sum(1 for p in self.promises.values() if not p.nodes),
        )


def limits_of(state: BrokerState) -> CapacityLimits:
    return state.limits
