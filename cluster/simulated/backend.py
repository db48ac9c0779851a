"""The simulated cluster: the cluster port over SQLite, with boot latency, faults and fake sshd.

State lives in one SQLite file, so a restarted worker (a new instance on the same file) sees the
same nodes, sessions, SSH ports and host keys. Every database call runs on the instance's single
database thread (short transactions), so the event loop never waits on SQLite.

Nothing here ever touches a real cluster or runs a command on the host: node addresses are
made-up 10.244.x.y strings (data only) and SSH commands are answered from a scenario.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from cluster.models import (
    ClaimRequest,
    ClaimResult,
    Inventory,
    InventorySummary,
    NodePhase,
    NodeRecord,
    NodeSpec,
    NodeState,
    NodeStatus,
    SessionLeftovers,
    SessionWiring,
    SshEndpoint,
    SshTarget,
    UsageCounts,
    summarize,
)
from cluster.port import ClusterUnavailable, NodeNotFound, PermanentClusterError
from cluster.simulated.faults import ApiErrors, FaultPlan
from cluster.simulated.scenario import SUCCESS, Answer, Scenario
from cluster.simulated.sshd import ListenerError, PortTaken, SshServers, generate_host_key
from cluster.simulated.store import CommandRow, NodeRow, SessionRow, Store
from labs.models import quantity_bytes

if TYPE_CHECKING:
    from cluster.settings import Settings

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

STATE_FILE = "simulated-cluster.sqlite"
FOLLOW_STORE_SECONDS = 1.0
"""How often every process on a data dir brings its SSH listeners in line with the store."""


def node_address(seq: int) -> str:
    """A stable, unique-looking pod-network address. Data only: nothing listens there."""
    return f"10.244.{(seq // 250) % 256}.{seq % 250 + 2}"


class SimulatedCluster:
    """`ClusterPort` backed by SQLite. See docs/simulated.md."""

    def __init__(
        self,
        path: Path,
        *,
        boot_seconds: float = 0.0,
        faults: FaultPlan | None = None,
        external_host: str = "127.0.0.1",
        ssh_host: str = "127.0.0.1",
        authorized_keys: list[str] | None = None,
        default_scenario: Scenario | None = None,
        exposed_ports_capacity: int | None = None,
        ssh_idle_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if boot_seconds < 0:
            raise ValueError(f"boot_seconds: must be >= 0 (got {boot_seconds!r})")
        self.path = Path(path)
        self.boot_seconds = boot_seconds
        self.external_host = external_host
        self.ssh_host = ssh_host
        self.default_scenario = default_scenario or Scenario()
        self.exposed_ports_capacity = exposed_ports_capacity
        self.ssh_idle_seconds = ssh_idle_seconds
        self.clock = clock
        self._faults = faults or FaultPlan()
        self._api_errors = ApiErrors(self._faults)
        self._store = Store(self.path)
        self._lock = threading.Lock()  # one user of the connection at a time (loop or db thread)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sim-cluster-db")
        self._ssh = SshServers(self._on_command, bind_host=ssh_host, authorized_keys=authorized_keys)
        self._restored: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._closed = False
        self._watched: list[_Watched] = []
        self._next_file_check = 0.0
        self.reload_interval = 1.0

    @classmethod
    def from_settings(cls, settings: Settings, *, base_scenario: Scenario | None = None) -> SimulatedCluster:
        """The backend of `labrador dev` and the worker. `base_scenario`: answers the caller needs
        from every node (e.g. the platform's setup steps); rules of `sim_scenario_file` come first."""
        faults_file = settings.sim_faults_file
        scenario_file = settings.sim_scenario_file
        default_scenario = Scenario.from_file(scenario_file) if scenario_file else Scenario()
        if base_scenario is not None:
            default_scenario = Scenario(rules=[*default_scenario.rules, *base_scenario.rules])
        sim = cls(
            settings.data_dir / STATE_FILE,
            boot_seconds=settings.sim_boot_seconds,
            faults=FaultPlan.from_file(faults_file) if faults_file else None,
            external_host=settings.external_host,
            ssh_idle_seconds=settings.sim_ssh_idle_seconds,
            default_scenario=default_scenario,
        )
        # Edits to the files apply to the running dev stack (checked at most once per reload_interval).
        if faults_file:
            sim._watched.append(_Watched(faults_file, _stamp(faults_file), sim._reload_faults))
        if scenario_file:
            base = base_scenario or Scenario()
            sim._watched.append(
                _Watched(scenario_file, _stamp(scenario_file), lambda p: sim._reload_scenario(p, base))
            )
        return sim

    def _reload_faults(self, path: Path) -> None:
        self.faults = FaultPlan.from_file(path)

    def _reload_scenario(self, path: Path, base: Scenario) -> None:
        self.default_scenario = Scenario(rules=[*Scenario.from_file(path).rules, *base.rules])

    def _check_files(self) -> None:
        now = time.monotonic()
        if now < self._next_file_check:
            return
        self._next_file_check = now + self.reload_interval
        for watched in self._watched:
            stamp = _stamp(watched.path)
            if stamp == watched.stamp:
                continue
            watched.stamp = stamp
            try:
                watched.reload(watched.path)
                log.info("simulated cluster: reloaded %s", watched.path)
            except ValueError as exc:  # keep the previous plan; the message names file and field
                log.warning("simulated cluster: keeping the previous settings: %s", exc)

    # --- knobs for tests and the dev stack ------------------------------------------------
    @property
    def faults(self) -> FaultPlan:
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        self._faults = plan
        self._api_errors = ApiErrors(plan)

    def set_scenario(
        self, scenario: Scenario | None, *, node_id: str | None = None, session_id: str | None = None
    ) -> None:
        """Answers for a node, a session (removed at release) or, with neither, every node.
        None removes it. Stored in SQLite, so a restarted worker answers the same."""
        if node_id is not None and session_id is not None:
            raise ValueError("set_scenario: give node_id or session_id, not both")
        scope = f"node:{node_id}" if node_id else f"session:{session_id}" if session_id else "default"
        body = None if scenario is None else scenario.model_dump_json()
        with self._side_db() as db:
            if body is None:
                db.execute("DELETE FROM scenarios WHERE scope = ?", (scope,))
            else:
                db.execute(
                    "INSERT INTO scenarios (scope, body) VALUES (?, ?)"
                    " ON CONFLICT (scope) DO UPDATE SET body = excluded.body",
                    (scope, body),
                )

    def commands(self, node_id: str) -> list[str]:
        """Command texts received by the node, in order (kept after the node is deleted)."""
        return [row.command for row in self.command_records(node_id)]

    def command_records(self, node_id: str) -> list[CommandRow]:
        with self._side_db() as db:
            rows = db.execute(
                "SELECT node_id, session_id, via, command, exit_code, at FROM commands WHERE node_id = ? ORDER BY id",
                (node_id,),
            ).fetchall()
        return [CommandRow(*r) for r in rows]

    @contextmanager
    def _side_db(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection for the synchronous test helpers (the main one belongs to the
        database thread)."""
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    # --- plumbing -------------------------------------------------------------------------
    async def _db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one short store call. Fast path: on the loop thread, never waiting for a lock (a
        transaction here takes tens of microseconds, a thread hop ten times that). When another
        process holds the write lock, or a bulk read is running, wait on the database thread."""
        if self._closed:
            raise ClusterUnavailable("simulated cluster: this instance is closed")
        if self._lock.acquire(blocking=False):
            try:
                return fn(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise ClusterUnavailable(f"simulated cluster state {self.path}: {exc}") from exc
            finally:
                self._lock.release()
        return await self._db_thread(fn, *args, **kwargs)

    async def _db_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a store call on the database thread, waiting up to 10 s for another writer."""
        if self._closed:
            raise ClusterUnavailable("simulated cluster: this instance is closed")

        def call() -> T:
            with self._lock:
                self._store.db.execute("PRAGMA busy_timeout = 10000")
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._store.db.execute("PRAGMA busy_timeout = 0")

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, call)
        except sqlite3.OperationalError as exc:  # still locked after the wait, disk I/O error...
            raise ClusterUnavailable(f"simulated cluster state {self.path}: {exc}") from exc

    async def _enter(self, method: str) -> None:
        """Injected API errors first (nothing changes when one fires), then restore listeners."""
        if self._watched:
            self._check_files()
        if self._api_errors.should_fail(method):
            raise ClusterUnavailable(f"simulated API error in {method} (fault plan api_error_rate)")
        if self._restored is None:
            self._restored = asyncio.create_task(self._restore_listeners())
            if self.ssh_idle_seconds is not None:
                self._reaper = asyncio.create_task(self._reap_idle_listeners(self.ssh_idle_seconds))
            self._follower = asyncio.create_task(self._follow_store())
        await asyncio.shield(self._restored)

    async def _restore_listeners(self) -> None:
        """A restarted worker serves the SSH endpoints the previous one handed out (same port, key).
        With idle reaping on, node listeners come back on the next ssh_target instead."""
        nodes, exposures = await self._db(self._store.endpoints_to_restore)
        # One listener that cannot come back must not fail every later call: the next
        # ssh_target/expose of that node tries again and reports the error to its caller.
        # Strict ports: a port another worker on the same data dir holds is that worker's to serve.
        if self.ssh_idle_seconds is None:
            for node_id, port, key in nodes:
                try:
                    await self._listen(f"node:{node_id}", node_id, "node", key, port, strict=True)
                except PortTaken:
                    pass
                except ClusterUnavailable as exc:
                    log.warning("simulated cluster: not restoring %s: %s", node_id, exc)
        for session_id, node_id, port, key in exposures:
            try:
                await self._serve_exposure(session_id, node_id, key, port)
            except ClusterUnavailable as exc:
                log.warning("simulated cluster: not restoring the exposure of %s: %s", session_id, exc)

    async def _follow_store(self) -> None:
        """SSH listeners follow the store, whichever process owns them (several workers may share one
        data dir): a listener the store no longer has (a released lab, a deleted or paused node, a port
        moved by another worker) closes; an exposure nobody serves (its worker died) is served here on
        its remembered port, so the student's port answers again."""
        while True:
            await asyncio.sleep(FOLLOW_STORE_SECONDS)
            try:
                await self._follow_once()
            except Exception as exc:  # a busy database this round: the next one catches up
                log.warning("simulated cluster: following the store: %s", exc)

    async def _follow_once(self) -> None:
        nodes, exposures = await self._db(self._store.endpoints_to_restore)
        wanted = {f"node:{n}": port for n, port, _ in nodes}
        wanted.update({f"expose:{s}": port for s, _, port, _ in exposures})
        # Listeners just started may not have their port in the store yet: give them a moment.
        for name, port in self._ssh.held(older_than=FOLLOW_STORE_SECONDS).items():
            if wanted.get(name) != port:
                await self._ssh.stop(name)
        held = self._ssh.held()
        for session_id, node_id, port, key in exposures:
            if f"expose:{session_id}" not in held:
                try:
                    await self._listen(f"expose:{session_id}", node_id, "exposed", key, port, strict=True)
                except PortTaken:
                    pass  # served by another worker
                except ClusterUnavailable as exc:
                    log.warning("simulated cluster: cannot serve the exposure of %s: %s", session_id, exc)

    async def _reap_idle_listeners(self, idle: float) -> None:
        """Close orchestrator listeners nobody used for `idle` seconds (ssh_target reopens them on
        the same port), so a worker holding thousands of labs keeps one socket per exposure only."""
        while True:
            await asyncio.sleep(max(idle / 2, 0.01))
            for name in self._ssh.idle("node:", idle):
                await self._ssh.stop(name)

    def _now(self) -> float:
        return self.clock()

    @staticmethod
    def _record(row: NodeRow, sessions: dict[str, SessionRow]) -> NodeRecord:
        # model_validate of a plain dict is the fastest way to build a record (pydantic-core does
        # it all); inventory builds one per node on the event loop.
        session = None
        if row.session_id is not None:
            s = sessions.get(row.session_id)
            session = {
                "session_id": row.session_id,
                "workflow_id": (s.workflow_id if s else None) or "",
                "run_id": (s.run_id if s else None) or "",
            }
        return NodeRecord.model_validate(
            {
                "node_id": row.node_id,
                "node_class": row.node_class,
                "role": row.role,
                "image": row.image,
                "state": row.state,
                "session": session,
                "memory_bytes": row.memory_bytes,
                "created_at": datetime.fromtimestamp(row.created_at, UTC),
            }
        )

    async def _records(self, rows: list[NodeRow]) -> list[NodeRecord]:
        ids = {r.session_id for r in rows if r.session_id}
        sessions = {}
        for session_id in ids:
            found = await self._db(self._store.session, session_id)
            if found:
                sessions[session_id] = found
        return [self._record(r, sessions) for r in rows]

    # --- node level -----------------------------------------------------------------------
    async def provision(self, spec: NodeSpec) -> NodeRecord:
        await self._enter("provision")
        try:
            memory = quantity_bytes(spec.memory)
        except ValueError as exc:
            raise PermanentClusterError(f"node {spec.node_id}: memory: {exc}") from None
        now = self._now()
        session = None
        if spec.session is not None:
            session = SessionRow(spec.session.session_id, spec.session.workflow_id, spec.session.run_id)
        row = NodeRow(
            seq=0,
            node_id=spec.node_id,
            node_class=spec.node_class,
            role=spec.role.value,
            image=spec.image,
            state=NodeState.CLAIMED.value if session else NodeState.PROVISIONING.value,
            session_id=session.session_id if session else None,
            memory_bytes=memory,
            created_at=now,
            claimed_at=now if session else None,
        )
        stored = await self._db(self._store.insert_node, row, session)
        return (await self._records([stored]))[0]

    async def node_status(self, node_id: str) -> NodeStatus:
        await self._enter("node_status")
        row = await self._db(self._store.node, node_id)
        if row is None:
            return NodeStatus(node_id=node_id, phase=NodePhase.MISSING)
        pull_error = self._faults.image_pull_failure(row.image)
        if pull_error:
            return NodeStatus(node_id=node_id, phase=NodePhase.FAILED, reason=pull_error)
        now = self._now()
        ready_at = row.created_at + self.boot_seconds
        if now < ready_at:
            return NodeStatus(node_id=node_id, phase=NodePhase.PROVISIONING, reason="booting")
        boot_error = self._faults.boot_failure(row.node_id, row.node_class)
        if boot_error:
            return NodeStatus(node_id=node_id, phase=NodePhase.FAILED, reason=boot_error)
        address = node_address(row.seq)
        if await self._db(self._store.is_paused, node_id):
            return NodeStatus(node_id=node_id, phase=NodePhase.PAUSED, address=address, reason="paused")
        if row.state == NodeState.CLAIMED.value:
            death = self._faults.death(row.node_id)
            if death is not None:
                died_at = max(ready_at, row.claimed_at or row.created_at) + death.after_seconds
                recovered = death.recover_after_seconds is not None and now >= died_at + death.recover_after_seconds
                if now >= died_at and not recovered:
                    return NodeStatus(node_id=node_id, phase=NodePhase.NOT_READY, address=address, reason=death.reason)
        return NodeStatus(node_id=node_id, phase=NodePhase.READY, address=address)

    async def mark_free(self, node_id: str) -> NodeRecord:
        await self._enter("mark_free")
        row = await self._db(self._store.mark_free, node_id)
        if row is None:
            raise NodeNotFound(f"node {node_id}: not found")
        if row.state == NodeState.CLAIMED.value:
            raise PermanentClusterError(
                f"node {node_id}: claimed by session {row.session_id}; a claimed node cannot be marked free"
            )
        return (await self._records([row]))[0]

    async def ssh_target(self, node_id: str) -> SshTarget:
        await self._enter("ssh_target")
        if await self._db(self._store.is_paused, node_id):
            # A paused guest's sshd does not answer: the target is where it was, nothing listens there.
            endpoint = await self._db(self._store.endpoint, node_id)
            if endpoint is None or endpoint[0] is None:
                raise ClusterUnavailable(f"node {node_id}: paused, its SSH does not answer")
            return SshTarget(node_id=node_id, host=self.ssh_host, port=endpoint[0])
        port = self._ssh.port(f"node:{node_id}")
        if port is None:
            endpoint = await self._db(self._store.endpoint, node_id)
            if endpoint is None:
                endpoint = await self._db(self._store.ensure_endpoint, node_id, generate_host_key)
            if endpoint is None or (await self._db(self._store.node, node_id)) is None:
                raise NodeNotFound(f"node {node_id}: not found (no SSH target)")
            port = await self._serve_node(node_id, endpoint[1], endpoint[0])
            if await self._db(self._store.node, node_id) is None:  # deleted while the listener started
                await self._ssh.stop(f"node:{node_id}")
                raise NodeNotFound(f"node {node_id}: not found (deleted)")
        return SshTarget(node_id=node_id, host=self.ssh_host, port=port)

    async def _listen(self, name: str, node_id: str, via: str, host_key: str, remembered: int | None,
                      *, strict: bool = False) -> int:
        try:
            return await self._ssh.ensure(name, node_id, via, host_key, remembered, strict=strict)
        except PortTaken:
            raise
        except ListenerError as exc:
            raise ClusterUnavailable(str(exc)) from exc

    async def _serve_node(self, node_id: str, host_key: str, remembered: int | None) -> int:
        port = await self._listen(f"node:{node_id}", node_id, "node", host_key, remembered)
        if port != remembered:
            await self._db(self._store.set_endpoint_port, node_id, port)
        return port

    async def _serve_exposure(self, session_id: str, node_id: str, host_key: str, remembered: int | None) -> int:
        # A student's port never moves: when another worker holds it, that worker serves it.
        try:
            port = await self._listen(f"expose:{session_id}", node_id, "exposed", host_key, remembered,
                                      strict=remembered is not None)
        except PortTaken:
            assert remembered is not None
            return remembered
        if port != remembered:
            await self._db(self._store.set_exposure_port, session_id, port)
        return port

    async def delete_node(self, node_id: str) -> None:
        await self._enter("delete_node")
        _existed, exposed = await self._db(self._store.delete_node, node_id)
        await self._ssh.stop(f"node:{node_id}")
        for session_id in exposed:
            await self._ssh.stop(f"expose:{session_id}")

    async def delete_node_if_unclaimed(self, node_id: str) -> bool:
        await self._enter("delete_node_if_unclaimed")
        if not await self._db(self._store.delete_node_if_unclaimed, node_id):
            return False
        # An unclaimed node has no session exposure; its own (orchestrator) endpoint may be serving.
        await self._ssh.stop(f"node:{node_id}")
        return True

    async def pause_node(self, node_id: str) -> None:
        await self._enter("pause_node")
        exists, exposed = await self._db(self._store.pause, node_id, self._now())
        if not exists:
            raise NodeNotFound(f"node {node_id}: not found (cannot pause it)")
        # sshd stops answering: listeners close (open connections too) and stay closed while paused.
        await self._ssh.stop(f"node:{node_id}")
        for session_id in exposed:
            await self._ssh.stop(f"expose:{session_id}")

    async def unpause_node(self, node_id: str) -> None:
        await self._enter("unpause_node")
        exists, exposures = await self._db(self._store.unpause, node_id)
        if not exists:
            raise NodeNotFound(f"node {node_id}: not found (cannot unpause it)")
        # The node's own listener comes back at the next ssh_target; exposures answer again now.
        for session_id, port, host_key in exposures:
            await self._serve_exposure(session_id, node_id, host_key, port)

    # --- session level --------------------------------------------------------------------
    async def claim(self, request: ClaimRequest) -> ClaimResult:
        await self._enter("claim")
        wants: dict[str, int] = {}
        for want in request.wants:
            wants[want.node_class] = wants.get(want.node_class, 0) + want.count
        ref = request.session
        rows = await self._db(
            self._store.claim,
            SessionRow(ref.session_id, ref.workflow_id, ref.run_id),
            list(wants.items()),
            self._now(),
        )
        return ClaimResult(nodes=await self._records(rows))

    async def wire(self, wiring: SessionWiring) -> None:
        await self._enter("wire")
        session_id = wiring.session.session_id
        ref = wiring.session
        refused = await self._db(
            self._store.wire,
            SessionRow(ref.session_id, ref.workflow_id, ref.run_id),
            wiring.controlplane,
            list(wiring.workers),
        )
        if refused is None:
            return
        node_id, row = refused
        if row is None:
            raise NodeNotFound(f"wire session {session_id}: node {node_id} not found")
        raise PermanentClusterError(
            f"wire session {session_id}: node {node_id} belongs to "
            f"{'session ' + row.session_id if row.session_id else 'no session'}"
        )

    async def unwire(self, session_id: str) -> None:
        await self._enter("unwire")
        await self._db(self._store.unwire, session_id)

    async def expose(self, session_id: str, node_id: str) -> SshEndpoint:
        await self._enter("expose")
        if self.exposed_ports_capacity is not None and await self._db(self._store.exposure, session_id) is None:
            in_use = len(await self._db_thread(self._store.all_exposures))
            if in_use >= self.exposed_ports_capacity:
                raise ClusterUnavailable(
                    f"expose session {session_id}: all {self.exposed_ports_capacity} exposed ports are in use"
                )
        target = await self._db(self._store.expose, session_id, node_id, generate_host_key)
        if target is None:
            raise NodeNotFound(f"expose session {session_id}: node {node_id} not found")
        exposed_node, port, host_key = target
        port = await self._serve_exposure(session_id, exposed_node, host_key, port)
        if await self._db(self._store.exposure, session_id) is None:  # released meanwhile
            await self._ssh.stop(f"expose:{session_id}")
            raise NodeNotFound(f"expose session {session_id}: released while exposing")
        return SshEndpoint(host=self.external_host, port=port)

    async def unexpose(self, session_id: str) -> None:
        await self._enter("unexpose")
        await self._db(self._store.unexpose, session_id)
        await self._ssh.stop(f"expose:{session_id}")

    async def release(self, session_id: str) -> int:
        await self._enter("release")
        node_ids, _exposed = await self._db(self._store.release, session_id)
        for node_id in node_ids:
            await self._ssh.stop(f"node:{node_id}")
        await self._ssh.stop(f"expose:{session_id}")
        return len(node_ids)

    # --- pool -----------------------------------------------------------------------------
    async def inventory_summary(self) -> InventorySummary:
        return summarize(await self.inventory())

    async def usage_counts(self, sessions: Collection[str], nodes: Collection[str]) -> UsageCounts:
        # What the inventory would count (faults and latency as for an inventory: it replaces one).
        await self._enter("inventory")
        vms, memory, per_session, present = await self._db(
            self._store.usage_counts, list(sessions), list(nodes)
        )
        return UsageCounts(vms=vms, memory_bytes=memory, sessions=per_session, nodes=sorted(present))

    async def inventory(self) -> Inventory:
        await self._enter("inventory")
        # Read and build on the database thread: with thousands of nodes this is the one call that
        # takes long enough to matter, and there it only shares the GIL with the loop.
        return await self._db_thread(self._inventory)

    def _inventory(self) -> Inventory:
        rows = self._store.all_nodes()
        leftovers = self._store.leftovers()
        exposures = self._store.all_exposures()
        sessions = {ref.session_id: ref for ref, _kinds in leftovers}
        return Inventory(
            nodes=[self._record(r, sessions) for r in rows],
            sessions=[
                SessionLeftovers(
                    session_id=ref.session_id,
                    workflow_id=ref.workflow_id,
                    run_id=ref.run_id,
                    kinds=kinds,
                )
                for ref, kinds in leftovers
            ],
            exposed_ports_in_use=len(exposures),
            exposed_ports_capacity=self.exposed_ports_capacity,
        )

    # --- SSH commands ---------------------------------------------------------------------
    async def _on_command(self, node_id: str, via: str, command: str) -> Answer:
        if self._watched:
            self._check_files()
        chosen: list[Answer] = []

        def answer(session_id: str | None, bodies: dict[str, str]) -> int:
            scopes = [f"node:{node_id}", f"session:{session_id}", "default"]
            result = None
            for scope in scopes:
                if scope in bodies:
                    result = _parse_scenario(bodies[scope]).answer(command)
                    if result is not None:
                        break
            if result is None:
                result = self.default_scenario.answer(command) or SUCCESS
            chosen.append(result)
            return result.exit_code

        await self._db(self._store.record_command, node_id, via, command, self._now(), answer)
        return chosen[-1]  # a busy retry may have asked twice

    # --- lifecycle ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop every SSH listener and close the database. State stays on disk."""
        if self._closed:
            return
        if self._restored is not None:
            await asyncio.gather(self._restored, return_exceptions=True)
        for task in (self._reaper, self._follower):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._ssh.close()
        self._closed = True
        await self._db_thread_close()
        self._executor.shutdown(wait=False)

    async def _db_thread_close(self) -> None:
        def close() -> None:
            with self._lock:
                self._store.close()

        await asyncio.get_running_loop().run_in_executor(self._executor, close)

    async def __aenter__(self) -> SimulatedCluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass
class _Watched:
    path: Path
    stamp: tuple[int, int] | None
    reload: Callable[[Path], None]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


@functools.lru_cache(maxsize=256)
def _parse_scenario(body: str) -> Scenario:
    return Scenario.model_validate_json(body)
