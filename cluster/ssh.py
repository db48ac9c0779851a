"""Running commands on lab nodes as root over SSH (asyncssh).

One call runs one command on one node through its own connection and returns what it did
(exit code, combined stdout+stderr, duration). The rules, documented in docs/ssh-and-secrets.md:

- The command string is sent as-is in the SSH `exec` request; the node's sshd runs it with root's
  login shell (`bash -c` on our images). What a recording SSH server sees is exactly that string.
- Each command has its own timeout. On expiry the runner asks sshd to KILL the process, closes the
  channel and reports `timed_out=True`, `exit_code=None`.
- Output: stdout and stderr are read concurrently and appended to one combined text in arrival
  order; it keeps the first `HEAD_CHARS` and the last `OUTPUT_LIMIT - HEAD_CHARS` characters with a
  marker saying how much was dropped, so memory stays bounded whatever the script prints. stdout
  alone is kept with the same limit (checks match their regex against stdout).
- Retries: only failures that happen before the command was sent (connection refused, reset,
  unreachable, timeout while connecting or before authentication completes) are retried, with
  exponential backoff, `RetryPolicy.attempts` times in all. Once the `exec` request is sent the
  command is never re-sent: a command that ran and failed is a result, and a connection lost while
  it ran is `CommandInterrupted` (nobody knows how far it got).
- Host keys: trust on first use, pinned for the session. With `host_key=None` the runner accepts
  the key the node presents and returns it (`CommandResult.host_key`, OpenSSH format without
  comment); the caller keeps it and passes it to every later call, which then only accepts that
  key. A mismatch raises `HostKeyMismatch` (never retried) before anything is sent.
- Authentication: only the platform key (public-key auth); no agent, no ~/.ssh/config, no passwords.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from cluster.models import SshTarget
from cluster.secret_files import InsecureKeyFile, read_key_bytes
from cluster.settings import Settings

OUTPUT_LIMIT = 16 * 1024
"""Characters of combined output (and of stdout) kept per command."""
HEAD_CHARS = 2 * 1024
"""Of those, how many come from the beginning of the output; the rest is the end."""
READ_CHUNK = 64 * 1024


class SshError(Exception):
    """Base of the runner's errors; messages name the node."""


class SshUnreachable(SshError):
    """Could not connect (or authenticate) after the retries; nothing was run."""


class AuthenticationFailed(SshError):
    """The node refused the platform key; retrying cannot help."""


class HostKeyMismatch(SshError):
    """The node presented a host key other than the one pinned at first contact."""


class CommandInterrupted(SshError):
    """The connection was lost after the command was sent: it may have partly run. Not retried."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    connect_timeout: float = 15.0
    """Covers TCP connect, key exchange and authentication."""

    def backoff(self, attempt: int) -> float:
        return float(min(self.max_backoff, self.initial_backoff * (2 ** (attempt - 1))))


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None
    output: str
    stdout: str
    duration_seconds: float
    host_key: str
    timed_out: bool = False
    connect_attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass
class BoundedText:
    """Keeps the head and the tail of a stream of text, counting what it dropped in between."""

    limit: int = OUTPUT_LIMIT
    head_chars: int = HEAD_CHARS
    head: str = ""
    tail: str = ""
    dropped: int = 0
    _tail_limit: int = field(init=False)

    def __post_init__(self) -> None:
        self._tail_limit = max(0, self.limit - self.head_chars)

    def append(self, chunk: str) -> None:
        if len(self.head) < self.head_chars:
            room = self.head_chars - len(self.head)
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail += chunk
        if len(self.tail) > self._tail_limit:
            excess = len(self.tail) - self._tail_limit
            self.dropped += excess
            self.tail = self.tail[excess:]

    def text(self) -> str:
        if not self.dropped:
            return self.head + self.tail
        return f"{self.head}\n[... {self.dropped} characters truncated ...]\n{self.tail}"


def truncate(text: str, limit: int = OUTPUT_LIMIT, head_chars: int = HEAD_CHARS) -> str:
    bounded = BoundedText(limit=limit, head_chars=min(head_chars, limit))
    bounded.append(text)
    return bounded.text()


def excerpt(text: str, limit: int = 1000) -> str:
    """The end of an output (where errors are), for reasons and check results."""
    if len(text) <= limit:
        return text
    return "[...]" + text[-limit:]


def key_text(key: asyncssh.SSHKey) -> str:
    """'algorithm base64' without comment: the form pinned in BoundNode.host_key."""
    parts = key.export_public_key("openssh").decode().split()
    return " ".join(parts[:2])


def fingerprint(public_key: str) -> str:
    return str(asyncssh.import_public_key(public_key).get_fingerprint("sha256"))


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, asyncssh.HostKeyNotVerifiable | asyncssh.PermissionDenied):
        return False
    if isinstance(exc, asyncssh.ConnectionLost):
        return True  # reset during the handshake
    if isinstance(exc, asyncssh.DisconnectError):
        return False  # protocol errors, refused service
    return isinstance(exc, OSError | TimeoutError)  # refused, reset, unreachable, connect timeout


class SshRunner:
    def __init__(
        self,
        client_key: asyncssh.SSHKey,
        *,
        retry: RetryPolicy | None = None,
        output_limit: int = OUTPUT_LIMIT,
    ) -> None:
        self._client_key = client_key
        self.retry = retry or RetryPolicy()
        self.output_limit = output_limit

    def with_retry(self, retry: RetryPolicy) -> SshRunner:
        return SshRunner(self._client_key, retry=retry, output_limit=self.output_limit)

    async def _connect(
        self, target: SshTarget, host_key: str | None, node: str
    ) -> tuple[asyncssh.SSHClientConnection, str, int]:
        if host_key is not None:
            pinned = asyncssh.import_public_key(host_key)
            known_hosts: object = ([pinned], [], [])
        else:
            known_hosts = None
        last: BaseException | None = None
        for attempt in range(1, self.retry.attempts + 1):
            try:
                conn = await asyncssh.connect(
                    target.host,
                    target.port,
                    username=target.username,
                    client_keys=[self._client_key],
                    known_hosts=known_hosts,
                    config=None,
                    agent_path=None,
                    password_auth=False,
                    kbdint_auth=False,
                    gss_auth=False,
                    host_based_auth=False,
                    connect_timeout=self.retry.connect_timeout,
                    login_timeout=self.retry.connect_timeout,
                    keepalive_interval=15,
                )
            except asyncssh.HostKeyNotVerifiable as exc:
                raise HostKeyMismatch(
                    f"node {node!r} ({target.host}:{target.port}) presented a host key other than the one "
                    f"pinned at first contact ({fingerprint(host_key or '')}): refusing to connect"
                ) from exc
            except asyncssh.PermissionDenied as exc:
                raise AuthenticationFailed(
                    f"node {node!r} ({target.host}:{target.port}) refused the platform key for "
                    f"{target.username!r}: {exc.reason}"
                ) from exc
            except Exception as exc:
                if not _retryable(exc):
                    raise SshUnreachable(
                        f"node {node!r} ({target.host}:{target.port}): SSH failed: {_describe(exc)}"
                    ) from exc
                last = exc
                if attempt < self.retry.attempts:
                    await asyncio.sleep(self.retry.backoff(attempt))
                continue
            seen = key_text(conn.get_server_host_key())  # type: ignore[arg-type]
            if host_key is not None and seen != " ".join(host_key.split()[:2]):
                conn.close()  # belt and braces: asyncssh already verified it
                raise HostKeyMismatch(f"node {node!r} presented host key {fingerprint(seen)}, pinned another")
            return conn, seen, attempt
        raise SshUnreachable(
            f"node {node!r} ({target.host}:{target.port}) unreachable over SSH after "
            f"{self.retry.attempts} attempts: {_describe(last)}"
        )

    async def run(
        self,
        target: SshTarget,
        command: str,
        *,
        timeout_seconds: float,
        host_key: str | None = None,
        node: str | None = None,
    ) -> CommandResult:
        """Run `command` once on the node. Raises SshError subclasses for what is not a result."""
        label = node or target.node_id
        conn, seen, attempts = await self._connect(target, host_key, label)
        combined = BoundedText(limit=self.output_limit, head_chars=min(HEAD_CHARS, self.output_limit))
        stdout = BoundedText(limit=self.output_limit, head_chars=min(HEAD_CHARS, self.output_limit))
        started = time.monotonic()
        timed_out = False
        exit_code: int | None = None
        try:
            async with conn:
                try:
                    process = await conn.create_process(command, encoding="utf-8", errors="replace")
                except (asyncssh.ChannelOpenError, OSError, asyncssh.ConnectionLost) as exc:
                    raise CommandInterrupted(f"node {label!r}: could not start the command: {_describe(exc)}") from exc
                process.stdin.write_eof()

                async def pump(stream: asyncssh.SSHReader[str], into: list[BoundedText]) -> None:
                    while chunk := await stream.read(READ_CHUNK):
                        for buffer in into:
                            buffer.append(chunk)

                try:
                    async with asyncio.timeout(timeout_seconds):
                        await asyncio.gather(
                            pump(process.stdout, [combined, stdout]), pump(process.stderr, [combined])
                        )
                        await process.wait_closed()
                except TimeoutError:
                    timed_out = True
                    with contextlib.suppress(Exception):
                        process.kill()
                    process.close()
                    combined.append(f"\n[timed out after {timeout_seconds:g}s]")
                else:
                    exit_code = process.exit_status
                    signal = process.exit_signal
                    if signal is not None:
                        exit_code = None
                        combined.append(f"\n[killed by signal {signal[0]}]")
                    elif exit_code is None or exit_code < 0:
                        raise CommandInterrupted(
                            f"node {label!r}: connection closed before the command reported an exit status"
                        )
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError) as exc:
            raise CommandInterrupted(
                f"node {label!r}: connection lost while the command ran: {_describe(exc)}"
            ) from exc
        return CommandResult(
            exit_code=exit_code,
            output=combined.text(),
            stdout=stdout.text(),
            duration_seconds=round(time.monotonic() - started, 3),
            host_key=seen,
            timed_out=timed_out,
            connect_attempts=attempts,
        )


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if str(exc) else text


# --- the platform key --------------------------------------------------------------------------


def platform_key_path(settings: Settings) -> Path:
    """The key the orchestrator logs in with. Dev (simulated backend): generated into the data dir
    when `ssh_private_key` is unset. The kubevirt backend requires it to be configured, because the
    nodes of the warm pool trust its public half and must keep trusting it across restarts."""
    if settings.ssh_private_key is not None:
        return settings.ssh_private_key.expanduser()
    if settings.cluster_backend != "simulated":
        raise SshError("setting ssh_private_key: required with the kubevirt backend (the platform SSH key)")
    path = settings.data_dir.expanduser() / "ssh" / "id_ed25519"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="labrador-platform-dev")
        tmp = path.with_name(f".id_ed25519.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.export_private_key("openssh"))
        try:
            os.link(tmp, path)  # exclusive: two processes starting at once agree on the first key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path


def load_platform_key(settings: Settings) -> asyncssh.SSHKey:
    path = platform_key_path(settings)
    try:
        return asyncssh.import_private_key(read_key_bytes(path, "ssh_private_key"))
    except InsecureKeyFile as exc:
        raise SshError(str(exc)) from None
    except (OSError, asyncssh.KeyImportError) as exc:
        raise SshError(f"setting ssh_private_key: cannot read {path}: {exc}") from exc


def platform_public_key(settings: Settings) -> str:
    """The public half, 'ssh-ed25519 AAAA... comment', for the nodes' authorized_keys."""
    return load_platform_key(settings).export_public_key("openssh").decode().strip()


def runner_from_settings(settings: Settings, retry: RetryPolicy | None = None) -> SshRunner:
    return SshRunner(load_platform_key(settings), retry=retry)


def generate_key_pair(comment: str) -> tuple[str, str]:
    """A fresh ed25519 pair: (private key in OpenSSH format, public key line)."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return key.export_private_key("openssh").decode(), key.export_public_key("openssh").decode().strip()
