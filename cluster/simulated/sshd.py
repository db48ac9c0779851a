"""In-process SSH servers standing in for the simulated nodes' sshd.

Nothing a client sends is ever executed: each command is handed to `on_command`, which records it
and returns the scenario's answer. One listener per node (what the orchestrator reaches) and one per
exposure (what the student reaches), each on its own loopback port with the node's host key.

Authentication: public-key only, user `root` only. By default any public key is accepted: a
simulated node has no cloud-init to receive the platform key, and the point is to run the same SSH
client code path as production. Pass `authorized_keys` to accept only those keys.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncssh

from cluster.simulated.scenario import Answer

log = logging.getLogger(__name__)

CommandHandler = Callable[[str, str, str], Awaitable[Answer]]
"""(node_id, via, command text) -> answer; via is 'node' or 'exposed'."""

# A bare shell reading its script from stdin (`bash -s`, `sh`, `/bin/bash -e -s`): real sshd would
# wait for EOF on stdin, so do we, and record the script with the command.
_STDIN_SHELL = re.compile(r"^\s*(sudo\s+)?(/usr)?(/bin/)?(ba|da|z)?sh(\s+-[a-zA-Z]+)*\s*$")
PROMPT = "# "


def generate_host_key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()


@dataclass
class _Listener:
    acceptor: asyncio.Server
    port: int
    connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    last_used: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)


class ListenerError(OSError):
    """A listener could not be opened (port exhausted, too many open files)."""


class PortTaken(ListenerError):
    """The remembered port is bound by someone else (another worker on the same data dir serves it)."""


class _Server(asyncssh.SSHServer):
    def __init__(self, listener_ref: list[_Listener], authorized: set[bytes] | None) -> None:
        self._listener_ref = listener_ref
        self._authorized = authorized
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        if self._listener_ref:
            self._listener_ref[0].connections.add(conn)
            self._listener_ref[0].last_used = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._listener_ref and self._conn is not None:
            self._listener_ref[0].connections.discard(self._conn)
            self._listener_ref[0].last_used = time.monotonic()

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if username != "root":
            return False
        return self._authorized is None or key.public_data in self._authorized


class SshServers:
    def __init__(
        self, on_command: CommandHandler, *, bind_host: str = "127.0.0.1", authorized_keys: list[str] | None = None
    ) -> None:
        self._on_command = on_command
        self._bind_host = bind_host
        self._authorized = (
            None
            if authorized_keys is None
            else {asyncssh.import_public_key(k).public_data for k in authorized_keys}
        )
        self._listeners: dict[str, _Listener] = {}
        self._starting: dict[str, asyncio.Task[int]] = {}

    def port(self, name: str) -> int | None:
        listener = self._listeners.get(name)
        return listener.port if listener else None

    async def ensure(
        self, name: str, node_id: str, via: str, host_key: str, port: int | None, *, strict: bool = False
    ) -> int:
        """Start the listener `name` unless it runs; prefer `port` (the remembered one). `strict`: that
        port or PortTaken (never move to a new port: someone else may be serving it)."""
        listener = self._listeners.get(name)
        if listener is not None:
            listener.last_used = time.monotonic()
            return listener.port
        task = self._starting.get(name)
        if task is None:
            task = asyncio.create_task(self._start(name, node_id, via, host_key, port, strict))
            self._starting[name] = task
            task.add_done_callback(lambda _t: self._starting.pop(name, None))
        return await asyncio.shield(task)

    async def _start(self, name: str, node_id: str, via: str, host_key: str, port: int | None,
                     strict: bool = False) -> int:
        ref: list[_Listener] = []
        built: list[asyncssh.SSHServerConnectionOptions] = []

        async def handle(process: asyncssh.SSHServerProcess[str]) -> None:
            await self._handle(node_id, via, process)

        def connection() -> asyncssh.SSHServerConnection:
            # The options (and the host key's import) are built at the first connection, not when the
            # listener starts: most exposures of a class start are never connected to within seconds,
            # and building them was a third of what an exposure cost the process (bench --burst).
            if not built:
                built.append(asyncssh.SSHServerConnectionOptions(
                    server_factory=lambda: _Server(ref, self._authorized),
                    server_host_keys=[asyncssh.import_private_key(host_key)],
                    process_factory=handle,
                    encoding="utf-8",
                    loop=loop,
                ))
            return asyncssh.SSHServerConnection(loop, built[0])

        loop = asyncio.get_running_loop()

        async def listen(on_port: int) -> asyncio.Server:
            # Bind the socket ourselves: asyncssh would resolve the host on a thread first.
            sock = socket.socket(socket.AF_INET6 if ":" in self._bind_host else socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self._bind_host, on_port))
                sock.listen(100)
                sock.setblocking(False)
                # asyncssh.listen() would also build its options on a thread; with no config file
                # to read, building them on the loop (at the first connection) is cheaper than the hop.
                return await loop.create_server(connection, sock=sock)
            except BaseException:
                sock.close()
                raise

        try:
            try:
                acceptor = await listen(port or 0)
            except OSError as exc:
                if not port or exc.errno in (errno.EMFILE, errno.ENFILE):
                    raise
                if strict:
                    raise PortTaken(f"simulated sshd for {name}: port {port} is taken") from exc
                log.warning("simulated sshd %s: port %s is taken, using a new one", name, port)
                acceptor = await listen(0)
        except PortTaken:
            raise
        except OSError as exc:
            raise ListenerError(
                f"simulated sshd for {name}: cannot listen on {self._bind_host}: {exc}"
                + (
                    " (one listener per node and per exposure: raise the open-files limit or set"
                    " ssh_idle_seconds so idle node listeners close)"
                    if exc.errno in (errno.EMFILE, errno.ENFILE)
                    else ""
                )
            ) from exc
        if not acceptor.sockets:  # asyncio gives up quietly when it cannot create the socket
            acceptor.close()
            raise ListenerError(
                f"simulated sshd for {name}: no listening socket on {self._bind_host} (too many open files?"
                " one listener per node and per exposure: raise the open-files limit or set ssh_idle_seconds)"
            )
        listener = _Listener(acceptor, acceptor.sockets[0].getsockname()[1])
        ref.append(listener)
        self._listeners[name] = listener
        return listener.port

    async def stop(self, name: str) -> None:
        task = self._starting.get(name)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        listener = self._listeners.pop(name, None)
        if listener is None:
            return
        listener.acceptor.close()
        for conn in list(listener.connections):
            conn.close()
        await listener.acceptor.wait_closed()

    def held(self, older_than: float = 0.0) -> dict[str, int]:
        """The listeners of this process (name -> port) started more than `older_than` seconds ago."""
        cutoff = time.monotonic() - older_than
        return {name: listener.port for name, listener in self._listeners.items() if listener.started <= cutoff}

    def idle(self, prefix: str, seconds: float) -> list[str]:
        """Listeners named `prefix...` with no connection, unused for `seconds`."""
        cutoff = time.monotonic() - seconds
        return [
            name
            for name, listener in self._listeners.items()
            if name.startswith(prefix) and not listener.connections and listener.last_used < cutoff
        ]

    async def close(self) -> None:
        for name in list(self._listeners):
            await self.stop(name)

    async def _handle(self, node_id: str, via: str, process: asyncssh.SSHServerProcess[str]) -> None:
        try:
            if process.command is None:
                await self._shell(node_id, via, process)
                return
            text = process.command
            if _STDIN_SHELL.match(text):
                script = await process.stdin.read()
                text = f"{text}\n{script}"
            answer = await self._on_command(node_id, via, text)
            if answer.delay:
                await asyncio.sleep(answer.delay)
            process.stdout.write(answer.stdout)
            process.stderr.write(answer.stderr)
            process.exit(answer.exit_code)
        except (asyncssh.Error, OSError):  # the client went away
            process.close()
        except asyncio.CancelledError:
            process.close()
            raise
        except Exception:
            log.exception("simulated sshd %s: command handling failed", node_id)
            process.exit(255)

    async def _shell(self, node_id: str, via: str, process: asyncssh.SSHServerProcess[str]) -> None:
        """An interactive session: each line is one command, answered from the scenario."""
        process.stdout.write(f"simulated node {node_id}: commands are recorded, not executed\n{PROMPT}")
        last = 0
        while True:
            try:
                line = await process.stdin.readline()
            except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged, asyncssh.SignalReceived):
                continue
            if not line:
                break
            command = line.strip()
            if command in ("exit", "logout"):
                break
            if command:
                answer = await self._on_command(node_id, via, command)
                if answer.delay:
                    await asyncio.sleep(answer.delay)
                process.stdout.write(answer.stdout)
                process.stderr.write(answer.stderr)
                last = answer.exit_code
            process.stdout.write(PROMPT)
        process.exit(last)
