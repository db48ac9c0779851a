"""The simulated cluster's state in SQLite. Synchronous: the backend runs every call on its one
database thread, so each method here is one short transaction.

Cross-process safety (two workers on one file) comes from `BEGIN IMMEDIATE`: writers take the
database lock before reading what they are about to change, so a claim's read-then-update cannot
interleave with another process's claim.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL UNIQUE,
    node_class TEXT NOT NULL,
    role TEXT NOT NULL,
    image TEXT NOT NULL,
    state TEXT NOT NULL,
    session_id TEXT,
    memory_bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    claimed_at REAL
);
CREATE INDEX IF NOT EXISTS nodes_free ON nodes (state, node_class, seq);
CREATE INDEX IF NOT EXISTS nodes_session ON nodes (session_id);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    workflow_id TEXT,
    run_id TEXT
);
CREATE TABLE IF NOT EXISTS wirings (
    session_id TEXT PRIMARY KEY,
    controlplane TEXT NOT NULL,
    workers TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS exposures (
    session_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    port INTEGER
);
CREATE TABLE IF NOT EXISTS ssh_endpoints (
    node_id TEXT PRIMARY KEY,
    port INTEGER,
    host_key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL,
    session_id TEXT,
    via TEXT NOT NULL,
    command TEXT NOT NULL,
    exit_code INTEGER,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_node ON commands (node_id, id);
CREATE TABLE IF NOT EXISTS paused_nodes (
    node_id TEXT PRIMARY KEY,
    paused_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS scenarios (
    scope TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
"""

# Parameters per `IN (...)` (SQLite allows 32,766; smaller statements keep each one quick).
_IN_CHUNK = 500
NODE_COLUMNS = "seq, node_id, node_class, role, image, state, session_id, memory_bytes, created_at, claimed_at"


@dataclass(frozen=True, slots=True)
class NodeRow:
    seq: int
    node_id: str
    node_class: str
    role: str
    image: str
    state: str
    session_id: str | None
    memory_bytes: int
    created_at: float
    claimed_at: float | None


@dataclass(frozen=True, slots=True)
class SessionRow:
    session_id: str
    workflow_id: str | None
    run_id: str | None


@dataclass(frozen=True, slots=True)
class CommandRow:
    node_id: str
    session_id: str | None
    via: str
    command: str
    exit_code: int | None
    at: float


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The store holds the simulated nodes' SSH host private keys: owner only (SQLite gives its
        # -wal and -shm files the database file's mode).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves (explicit, short transactions).
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10.0, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=OFF")
        self.db.executescript(SCHEMA)
        # Never wait on the caller's thread; the backend retries busy calls on its database thread.
        self.db.execute("PRAGMA busy_timeout = 0")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- nodes --------------------------------------------------------------------------------
    def _node(self, node_id: str) -> NodeRow | None:
        row = self.db.execute(f"SELECT {NODE_COLUMNS} FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return NodeRow(*row) if row else None

    def node(self, node_id: str) -> NodeRow | None:
        return self._node(node_id)

    def insert_node(
        self,
        node: NodeRow,
        session: SessionRow | None,
    ) -> NodeRow:
        """Create-or-get: returns the existing row untouched when the node exists."""
        with self.tx() as db:
            existing = self._node(node.node_id)
            if existing is not None:
                return existing
            db.execute(
                "INSERT INTO nodes (node_id, node_class, role, image, state, session_id, memory_bytes,"
                " created_at, claimed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    node.node_id, node.node_class, node.role, node.image, node.state, node.session_id,
                    node.memory_bytes, node.created_at, node.claimed_at,
                ),
            )
            if session is not None:
                self._record_session(session)
            created = self._node(node.node_id)
            assert created is not None
            return created

    def mark_free(self, node_id: str) -> NodeRow | None:
        with self.tx() as db:
            db.execute("UPDATE nodes SET state = 'free' WHERE node_id = ? AND state = 'provisioning'", (node_id,))
            return self._node(node_id)

    def delete_node(self, node_id: str) -> tuple[bool, list[str]]:
        """Returns whether the node existed and the sessions whose exposure pointed at it."""
        with self.tx() as db:
            exposed = [r[0] for r in db.execute("SELECT session_id FROM exposures WHERE node_id = ?", (node_id,))]
            deleted = db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,)).rowcount
            db.execute("DELETE FROM ssh_endpoints WHERE node_id = ?", (node_id,))
            db.execute("DELETE FROM exposures WHERE node_id = ?", (node_id,))
            db.execute("DELETE FROM paused_nodes WHERE node_id = ?", (node_id,))
            return deleted > 0, exposed

    def delete_node_if_unclaimed(self, node_id: str) -> bool:
        """One transaction: delete the node only while it is provisioning or free. True when deleted
        or absent, False when a session holds it (nothing changes). The state condition sits in the
        same write transaction as claim's conditional UPDATE, so the two cannot both win."""
        with self.tx() as db:
            deleted = db.execute(
                "DELETE FROM nodes WHERE node_id = ? AND state IN ('provisioning', 'free')", (node_id,)
            ).rowcount
            if not deleted and self._node(node_id) is not None:
                return False
            db.execute("DELETE FROM ssh_endpoints WHERE node_id = ?", (node_id,))
            db.execute("DELETE FROM paused_nodes WHERE node_id = ?", (node_id,))
            return True

    def endpoints_to_restore(self) -> tuple[list[tuple[str, int, str]], list[tuple[str, str, int, str]]]:
        """Node endpoints (node, port, key) and exposures (session, node, port, key) that were serving."""
        # A paused node's sshd does not answer: its listeners come back when it is unpaused.
        nodes = list(
            self.db.execute(
                "SELECT node_id, port, host_key FROM ssh_endpoints WHERE port IS NOT NULL"
                " AND node_id NOT IN (SELECT node_id FROM paused_nodes)"
            )
        )
        exposures = list(
            self.db.execute(
                "SELECT e.session_id, e.node_id, e.port, s.host_key FROM exposures e"
                " JOIN ssh_endpoints s ON s.node_id = e.node_id WHERE e.port IS NOT NULL"
                " AND e.node_id NOT IN (SELECT node_id FROM paused_nodes)"
            )
        )
        return nodes, exposures

    # --- pause ----------------------------------------------------------------------------------
    def pause(self, node_id: str, at: float) -> tuple[bool, list[str]]:
        """Mark the node paused (idempotent: the first pause time stays). Returns whether the node
        exists and the sessions whose exposure points at it (their listeners must stop)."""
        with self.tx() as db:
            if self._node(node_id) is None:
                return False, []
            db.execute(
                "INSERT INTO paused_nodes (node_id, paused_at) VALUES (?, ?) ON CONFLICT (node_id) DO NOTHING",
                (node_id, at),
            )
            exposed = [r[0] for r in db.execute("SELECT session_id FROM exposures WHERE node_id = ?", (node_id,))]
            return True, exposed

    def unpause(self, node_id: str) -> tuple[bool, list[tuple[str, int | None, str]]]:
        """Clear the pause (idempotent). Returns whether the node exists and the exposures of the node
        that were serving (session, port, host key), to serve again."""
        with self.tx() as db:
            db.execute("DELETE FROM paused_nodes WHERE node_id = ?", (node_id,))
            if self._node(node_id) is None:
                return False, []
            exposures = list(
                db.execute(
                    "SELECT e.session_id, e.port, s.host_key FROM exposures e"
                    " JOIN ssh_endpoints s ON s.node_id = e.node_id WHERE e.node_id = ? AND e.port IS NOT NULL",
                    (node_id,),
                )
            )
            return True, exposures

    def is_paused(self, node_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM paused_nodes WHERE node_id = ?", (node_id,)).fetchone() is not None

    def all_nodes(self) -> list[NodeRow]:
        return [NodeRow(*r) for r in self.db.execute(f"SELECT {NODE_COLUMNS} FROM nodes ORDER BY seq")]

    def session_nodes(self, session_id: str) -> list[NodeRow]:
        rows = self.db.execute(f"SELECT {NODE_COLUMNS} FROM nodes WHERE session_id = ? ORDER BY seq", (session_id,))
        return [NodeRow(*r) for r in rows]

    # --- sessions -----------------------------------------------------------------------------
    def _record_session(self, session: SessionRow) -> None:
        self.db.execute(
            "INSERT INTO sessions (session_id, workflow_id, run_id) VALUES (?, ?, ?)"
            " ON CONFLICT (session_id) DO NOTHING",
            (session.session_id, session.workflow_id, session.run_id),
        )

    def session(self, session_id: str) -> SessionRow | None:
        row = self.db.execute(
            "SELECT session_id, workflow_id, run_id FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
        return SessionRow(*row) if row else None

    def claim(self, session: SessionRow, wants: list[tuple[str, int]], now: float) -> list[NodeRow]:
        """One transaction: count what the session holds, take the rest from free nodes."""
        with self.tx() as db:
            self._record_session(session)
            for node_class, count in wants:
                (held,) = db.execute(
                    "SELECT COUNT(*) FROM nodes WHERE session_id = ? AND node_class = ?",
                    (session.session_id, node_class),
                ).fetchone()
                missing = count - held
                if missing <= 0:
                    continue
                # The conditional UPDATE is the exclusivity guard: a node leaves 'free' exactly once.
                db.execute(
                    "UPDATE nodes SET state = 'claimed', session_id = ?, claimed_at = ?"
                    " WHERE state = 'free' AND seq IN ("
                    "  SELECT seq FROM nodes WHERE state = 'free' AND node_class = ? ORDER BY seq LIMIT ?)",
                    (session.session_id, now, node_class, missing),
                )
            return self.session_nodes(session.session_id)

    def release(self, session_id: str) -> tuple[list[str], list[str]]:
        """Delete everything of the session; returns (deleted node IDs, node IDs with an exposure)."""
        with self.tx() as db:
            node_ids = [r[0] for r in db.execute("SELECT node_id FROM nodes WHERE session_id = ?", (session_id,))]
            exposed = [r[0] for r in db.execute("SELECT node_id FROM exposures WHERE session_id = ?", (session_id,))]
            db.executemany("DELETE FROM nodes WHERE node_id = ?", [(n,) for n in node_ids])
            db.executemany("DELETE FROM ssh_endpoints WHERE node_id = ?", [(n,) for n in node_ids])
            db.executemany("DELETE FROM paused_nodes WHERE node_id = ?", [(n,) for n in node_ids])
            db.execute("DELETE FROM wirings WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM exposures WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM scenarios WHERE scope = ?", (f"session:{session_id}",))
            return node_ids, exposed

    # --- wiring and exposure ------------------------------------------------------------------
    def wire(self, session: SessionRow, controlplane: str, workers: list[str]) -> tuple[str, NodeRow | None] | None:
        """Wire the session if every node exists and is the session's, in one transaction; else
        nothing changes and the first node that is not is returned (node ID, its row or None)."""
        with self.tx() as db:
            for node_id in [controlplane, *workers]:
                row = self._node(node_id)
                if row is None or row.session_id != session.session_id:
                    return node_id, row
            self._record_session(session)
            db.execute(
                "INSERT INTO wirings (session_id, controlplane, workers) VALUES (?, ?, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET controlplane = excluded.controlplane,"
                " workers = excluded.workers",
                (session.session_id, controlplane, json.dumps(workers)),
            )
            return None

    def wiring(self, session_id: str) -> tuple[str, list[str]] | None:
        row = self.db.execute(
            "SELECT controlplane, workers FROM wirings WHERE session_id = ?", (session_id,)
        ).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def unwire(self, session_id: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM wirings WHERE session_id = ?", (session_id,))

    def exposure(self, session_id: str) -> tuple[str, int | None] | None:
        row = self.db.execute("SELECT node_id, port FROM exposures WHERE session_id = ?", (session_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def all_exposures(self) -> list[tuple[str, str, int | None]]:
        return list(self.db.execute("SELECT session_id, node_id, port FROM exposures"))

    def expose(
        self, session_id: str, node_id: str, new_host_key: Callable[[], str]
    ) -> tuple[str, int | None, str] | None:
        """Create-or-get the exposure row and the endpoint of the node it points at, in one
        transaction: (exposed node ID, port or None when not yet bound, host key). An exposure that
        exists keeps its node. None when that node does not exist."""
        with self.tx() as db:
            row = db.execute("SELECT node_id, port FROM exposures WHERE session_id = ?", (session_id,)).fetchone()
            exposed_node, port = (row[0], row[1]) if row else (node_id, None)
            endpoint = self._ensure_endpoint(exposed_node, new_host_key)
            if endpoint is None:
                return None
            if row is None:
                db.execute("INSERT INTO exposures (session_id, node_id, port) VALUES (?, ?, NULL)",
                           (session_id, exposed_node))
            return exposed_node, port, endpoint[1]

    def set_exposure_port(self, session_id: str, port: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE exposures SET port = ? WHERE session_id = ?", (port, session_id))

    def unexpose(self, session_id: str) -> tuple[str, int | None] | None:
        with self.tx() as db:
            row = db.execute("SELECT node_id, port FROM exposures WHERE session_id = ?", (session_id,)).fetchone()
            db.execute("DELETE FROM exposures WHERE session_id = ?", (session_id,))
            return (row[0], row[1]) if row else None

    def usage_counts(
        self, sessions: Sequence[str], nodes: Sequence[str]
    ) -> tuple[int, int, dict[str, tuple[int, int]], list[str]]:
        """(VMs, memory) of every node, per session asked about, and which nodes asked about exist:
        aggregates in SQLite instead of a row per node in Python."""
        vms, memory = self.db.execute("SELECT COUNT(*), COALESCE(SUM(memory_bytes), 0) FROM nodes").fetchone()
        per_session: dict[str, tuple[int, int]] = {}
        present: list[str] = []
        for start in range(0, len(sessions), _IN_CHUNK):
            chunk = sessions[start:start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for session_id, count, used in self.db.execute(
                f"SELECT session_id, COUNT(*), SUM(memory_bytes) FROM nodes WHERE session_id IN ({marks})"
                " GROUP BY session_id", tuple(chunk),
            ):
                per_session[session_id] = (count, used)
        for start in range(0, len(nodes), _IN_CHUNK):
            chunk = nodes[start:start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            present += [row[0] for row in self.db.execute(
                f"SELECT node_id FROM nodes WHERE node_id IN ({marks})", tuple(chunk))]
        return vms, memory, per_session, present

    def leftovers(self) -> list[tuple[SessionRow, list[str]]]:
        """Sessions that still own objects, with the kinds of those objects."""
        rows = self.db.execute(
            "WITH owned (session_id, kind) AS ("
            "  SELECT DISTINCT session_id, 'node' FROM nodes WHERE session_id IS NOT NULL"
            "  UNION ALL SELECT session_id, 'networkpolicy' FROM wirings"
            "  UNION ALL SELECT session_id, 'service' FROM exposures)"
            " SELECT o.session_id, o.kind, s.workflow_id, s.run_id FROM owned o"
            " LEFT JOIN sessions s ON s.session_id = o.session_id ORDER BY o.session_id"
        )
        result: dict[str, tuple[SessionRow, list[str]]] = {}
        for session_id, kind, workflow_id, run_id in rows:
            entry = result.setdefault(session_id, (SessionRow(session_id, workflow_id, run_id), []))
            entry[1].append(kind)
        return list(result.values())

    # --- SSH endpoints and commands ----------------------------------------------------------
    def endpoint(self, node_id: str) -> tuple[int | None, str] | None:
        row = self.db.execute("SELECT port, host_key FROM ssh_endpoints WHERE node_id = ?", (node_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def ensure_endpoint(self, node_id: str, new_host_key: Callable[[], str]) -> tuple[int | None, str] | None:
        """Create-or-get the node's endpoint row (its host key survives restarts; a key is made only
        for a node that has none yet). None if no node."""
        with self.tx():
            return self._ensure_endpoint(node_id, new_host_key)

    def _ensure_endpoint(self, node_id: str, new_host_key: Callable[[], str]) -> tuple[int | None, str] | None:
        if self._node(node_id) is None:
            return None
        existing = self.endpoint(node_id)
        if existing is not None:
            return existing
        host_key = new_host_key()
        self.db.execute("INSERT INTO ssh_endpoints (node_id, port, host_key) VALUES (?, NULL, ?)", (node_id, host_key))
        return None, host_key

    def set_endpoint_port(self, node_id: str, port: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE ssh_endpoints SET port = ? WHERE node_id = ?", (port, node_id))

    def record_command(
        self, node_id: str, via: str, command: str, at: float, answer: Callable[[str | None, dict[str, str]], int]
    ) -> None:
        """Append a command with the exit code `answer` picks from the node's session and scenarios."""
        with self.tx() as db:
            row = db.execute("SELECT session_id FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            session_id = row[0] if row else None
            scopes = [f"node:{node_id}", "default"] + ([f"session:{session_id}"] if session_id else [])
            exit_code = answer(session_id, self.scenario_bodies(scopes))
            db.execute(
                "INSERT INTO commands (node_id, session_id, via, command, exit_code, at) VALUES (?, ?, ?, ?, ?, ?)",
                (node_id, session_id, via, command, exit_code, at),
            )

    # --- scenarios ----------------------------------------------------------------------------
    def scenario_bodies(self, scopes: list[str]) -> dict[str, str]:
        marks = ",".join("?" for _ in scopes)
        rows = self.db.execute(f"SELECT scope, body FROM scenarios WHERE scope IN ({marks})", scopes)
        return dict(rows)
