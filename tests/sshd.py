"""A real SSH server for tests: asyncssh on loopback, executing every command for real with bash in a
temporary directory, recording the commands it received in order.

One `LoopbackSshd` stands for one lab node: its own host key, its own root directory (used as $HOME
and working directory) and a `bin/` put first on PATH, where tests place stand-ins for the programs
a laptop does not have (kubeadm, kubectl, hostnamectl). Nothing is mocked in SSH itself: key exchange,
host-key verification, public-key authentication, exit status and signals are asyncssh's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from cluster.models import SshTarget

FAKE_KUBEADM = """#!/bin/sh
case "$*" in
  "token create --print-join-command"*)
    echo "kubeadm join 10.0.0.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:00ff";;
  join*) echo "This node has joined the cluster";;
  *) echo "kubeadm: unexpected $*" >&2; exit 1;;
esac
"""
FAKE_OK = "#!/bin/sh\necho \"$(basename \"$0\") $*\"\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LoopbackSshd:
    root: Path
    authorized_keys: list[str]
    node_id: str = "node"
    host_key: asyncssh.SSHKey = field(default_factory=lambda: asyncssh.generate_private_key("ssh-ed25519"))
    port: int = 0
    commands: list[str] = field(default_factory=list)
    connections: int = 0
    _server: asyncssh.SSHAcceptor | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.bin.mkdir(exist_ok=True)
        for name, text in {"kubeadm": FAKE_KUBEADM, "kubectl": FAKE_OK, "hostnamectl": FAKE_OK}.items():
            path = self.bin / name
            path.write_text(text)
            path.chmod(0o755)

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def target(self) -> SshTarget:
        return SshTarget(node_id=self.node_id, host="127.0.0.1", port=self.port, username="root")

    @property
    def public_host_key(self) -> str:
        return " ".join(self.host_key.export_public_key("openssh").decode().split()[:2])

    async def start(self, port: int | None = None) -> LoopbackSshd:
        sshd = self

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                sshd.connections += 1

        self._server = await asyncssh.create_server(
            Server,
            "127.0.0.1",
            port if port is not None else self.port,
            server_host_keys=[self.host_key],
            authorized_client_keys=asyncssh.import_authorized_keys("\n".join(self.authorized_keys)),
            process_factory=self._handle,
            encoding=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command or ""
        self.commands.append(command)
        env = {**os.environ, "HOME": str(self.root), "PATH": f"{self.bin}:{os.environ.get('PATH', '')}"}
        child = await asyncio.create_subprocess_exec(
            "bash", "-c", command, cwd=self.root, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        assert child.stdout is not None and child.stderr is not None

        async def pump(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()

        work = asyncio.ensure_future(asyncio.gather(pump(child.stdout, process.stdout),
                                                    pump(child.stderr, process.stderr), child.wait()))
        closed = asyncio.ensure_future(process.channel.wait_closed())
        for future in (work, closed):  # whatever happens below, their outcome counts as seen
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait({work, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not work.done():  # the client went away (timeout) or the server stops: kill what ran
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                work.cancel()
        if work.cancelled() or work.exception() is not None:
            return
        code = child.returncode or 0
        process.exit(code if code >= 0 else 128 - code)
