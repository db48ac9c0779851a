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
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from cluster.models import (
    ClaimRequest,
    ClaimResult,
    Inventory,
    NodePhase,
    NodeRecord,
    NodeSpec,
    NodeState,
    NodeStatus,
    SessionLeftovers,
    SessionRef,
    SessionWiring,
    SshEndpoint,
    SshTarget,
)
from cluster.port import ClusterUnavailable, NodeNotFound, PermanentClusterError
from cluster.simulated.faults import ApiErrors, FaultPlan
from cluster.simulated.scenario import SUCCESS, Answer, Scenario
from cluster.simulated.sshd import SshServers, generate_host_key
from cluster.simulated.store import CommandRow, NodeRow, SessionRow, Store
from labs.models import Role, quantity_bytes

if TYPE_CHECKING:
    from labrador.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")

STATE_FILE = "simulated-cluster.sqlite"


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
        self.clock = clock
        self._faults = faults or FaultPlan()
        self._api_errors = ApiErrors(self._faults)
        self._store = Store(self.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sim-cluster-db")
        self._ssh = SshServers(self._on_command, bind_host=ssh_host, authorized_keys=authorized_keys)
        self._restored: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> SimulatedCluster:
        faults_file = settings.sim_faults_file
        scenario_file = settings.sim_scenario_file
        return cls(
            settings.data_dir / STATE_FILE,
            boot_seconds=settings.sim_boot_seconds,
            faults=FaultPlan.from_file(faults_file) if faults_file else None,
            external_host=settings.external_host,
            default_scenario=Scenario.from_file(scenario_file) if scenario_file else None,
        )

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
        if self._closed:
            raise ClusterUnavailable("simulated cluster: this instance is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except sqlite3.OperationalError as exc:  # locked/busy: another process holds the file
            raise ClusterUnavailable(f"simulated cluster state {self.path}: {exc}") from exc

    async def _enter(self, method: str) -> None:
        """Injected API errors first (nothing changes when one fires), then restore listeners."""
        if self._api_errors.should_fail(method):
            raise ClusterUnavailable(f"simulated API error in {method} (fault plan api_error_rate)")
        if self._restored is None:
            self._restored = asyncio.create_task(self._restore_listeners())
        await asyncio.shield(self._restored)

    async def _restore_listeners(self) -> None:
        """A restarted worker serves the SSH endpoints the previous one handed out (same port, key)."""
        nodes, exposures = await self._db(self._store.endpoints_to_restore)
        for node_id, port, key in nodes:
            await self._serve_node(node_id, key, port)
        for session_id, node_id, port, key in exposures:
            await self._serve_exposure(session_id, node_id, key, port)

    def _now(self) -> float:
        return self.clock()

    @staticmethod
    def _record(row: NodeRow, sessions: dict[str, SessionRow]) -> NodeRecord:
        ref = None
        if row.session_id is not None:
            s = sessions.get(row.session_id)
            ref = SessionRef(
                session_id=row.session_id,
                workflow_id=(s.workflow_id if s else None) or "",
                run_id=(s.run_id if s else None) or "",
            )
        return NodeRecord(
            node_id=row.node_id,
            node_class=row.node_class,
            role=Role(row.role),
            image=row.image,
            state=NodeState(row.state),
            session=ref,
            memory_bytes=row.memory_bytes,
            created_at=datetime.fromtimestamp(row.created_at, UTC),
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
        port = self._ssh.port(f"node:{node_id}")
        if port is None:
            endpoint = await self._db(self._store.endpoint, node_id)
            if endpoint is None:
                endpoint = await self._db(self._store.ensure_endpoint, node_id, generate_host_key())
            if endpoint is None or (await self._db(self._store.node, node_id)) is None:
                raise NodeNotFound(f"node {node_id}: not found (no SSH target)")
            port = await self._serve_node(node_id, endpoint[1], endpoint[0])
        return SshTarget(node_id=node_id, host=self.ssh_host, port=port)

    async def _serve_node(self, node_id: str, host_key: str, remembered: int | None) -> int:
        port = await self._ssh.ensure(f"node:{node_id}", node_id, "node", host_key, remembered)
        if port != remembered:
            await self._db(self._store.set_endpoint_port, node_id, port)
        return port

    async def _serve_exposure(self, session_id: str, node_id: str, host_key: str, remembered: int | None) -> int:
        port = await self._ssh.ensure(f"expose:{session_id}", node_id, "exposed", host_key, remembered)
        if port != remembered:
            await self._db(self._store.set_exposure_port, session_id, port)
        return port

    async def delete_node(self, node_id: str) -> None:
        await self._enter("delete_node")
        _existed, exposed = await self._db(self._store.delete_node, node_id)
        await self._ssh.stop(f"node:{node_id}")
        for session_id in exposed:
            await self._ssh.stop(f"expose:{session_id}")

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
        for node_id in [wiring.controlplane, *wiring.workers]:
            row = await self._db(self._store.node, node_id)
            if row is None:
                raise NodeNotFound(f"wire session {session_id}: node {node_id} not found")
            if row.session_id != session_id:
                raise PermanentClusterError(
                    f"wire session {session_id}: node {node_id} belongs to "
                    f"{'session ' + row.session_id if row.session_id else 'no session'}"
                )
        ref = wiring.session
        await self._db(
            self._store.wire,
            SessionRow(ref.session_id, ref.workflow_id, ref.run_id),
            wiring.controlplane,
            list(wiring.workers),
        )

    async def unwire(self, session_id: str) -> None:
        await self._enter("unwire")
        await self._db(self._store.unwire, session_id)

    async def expose(self, session_id: str, node_id: str) -> SshEndpoint:
        await self._enter("expose")
        existing = await self._db(self._store.exposure, session_id)
        if existing is None:
            if self.exposed_ports_capacity is not None:
                in_use = len(await self._db(self._store.all_exposures))
                if in_use >= self.exposed_ports_capacity:
                    raise ClusterUnavailable(
                        f"expose session {session_id}: all {self.exposed_ports_capacity} exposed ports are in use"
                    )
            endpoint = await self._db(self._store.ensure_endpoint, node_id, generate_host_key())
            if endpoint is None:
                raise NodeNotFound(f"expose session {session_id}: node {node_id} not found")
            existing = await self._db(self._store.expose, session_id, node_id)
        exposed_node, port = existing
        endpoint = await self._db(self._store.endpoint, exposed_node)
        if endpoint is None:
            raise NodeNotFound(f"expose session {session_id}: node {exposed_node} not found")
        port = await self._serve_exposure(session_id, exposed_node, endpoint[1], port)
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
    async def inventory(self) -> Inventory:
        await self._enter("inventory")
        rows = await self._db(self._store.all_nodes)
        leftovers = await self._db(self._store.leftovers)
        exposures = await self._db(self._store.all_exposures)
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
        return chosen[0]

    # --- lifecycle ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop every SSH listener and close the database. State stays on disk."""
        if self._closed:
            return
        if self._restored is not None:
            await asyncio.gather(self._restored, return_exceptions=True)
        await self._ssh.close()
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._store.close)
        self._executor.shutdown(wait=False)

    async def __aenter__(self) -> SimulatedCluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@functools.lru_cache(maxsize=256)
def _parse_scenario(body: str) -> Scenario:
    return Scenario.model_validate_json(body)
