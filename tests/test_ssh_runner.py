"""The SSH runner against a real asyncssh server on loopback that runs commands with bash."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from cluster.ssh import (
    OUTPUT_LIMIT,
    AuthenticationFailed,
    HostKeyMismatch,
    RetryPolicy,
    SshRunner,
    SshUnreachable,
    platform_key_path,
    platform_public_key,
    truncate,
)
from labrador.settings import Settings
from tests.sshd import LoopbackSshd, free_port

FAST = RetryPolicy(attempts=4, initial_backoff=0.2, max_backoff=0.5, connect_timeout=5)


@pytest.fixture(scope="module")
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
async def node(tmp_path: Path, client_key: asyncssh.SSHKey) -> AsyncIterator[LoopbackSshd]:
    server = LoopbackSshd(tmp_path / "node", [client_key.export_public_key("openssh").decode()], node_id="n1")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def runner(client_key: asyncssh.SSHKey) -> SshRunner:
    return SshRunner(client_key, retry=FAST)


@pytest.mark.timeout(20)
async def test_success_captures_exit_code_and_combined_output(node: LoopbackSshd, runner: SshRunner) -> None:
    result = await runner.run(node.target, "echo out; echo err >&2; touch made-here", timeout_seconds=10)
    assert result.ok and result.exit_code == 0
    assert "out" in result.output and "err" in result.output
    assert result.stdout.strip() == "out"  # stderr stays out of what checks match
    assert (node.root / "made-here").exists()  # it really ran, in the node's directory
    assert node.commands == ["echo out; echo err >&2; touch made-here"]  # sent verbatim
    assert result.host_key == node.public_host_key


@pytest.mark.timeout(20)
async def test_non_zero_exit_is_a_result_and_is_sent_once(node: LoopbackSshd, runner: SshRunner) -> None:
    result = await runner.run(node.target, "echo broken; exit 3", timeout_seconds=10)
    assert result.exit_code == 3 and not result.ok
    assert "broken" in result.output
    assert node.commands == ["echo broken; exit 3"]


@pytest.mark.timeout(20)
async def test_timeout_kills_and_reports(node: LoopbackSshd, runner: SshRunner) -> None:
    started = time.monotonic()
    result = await runner.run(node.target, "echo started; sleep 30; touch never", timeout_seconds=0.5)
    assert time.monotonic() - started < 5
    assert result.timed_out and result.exit_code is None
    assert "started" in result.output and "timed out after 0.5s" in result.output
    await asyncio.sleep(0.3)
    assert not (node.root / "never").exists()
    assert len(node.commands) == 1


@pytest.mark.timeout(20)
async def test_output_is_truncated_keeping_head_and_tail(node: LoopbackSshd, runner: SshRunner) -> None:
    result = await runner.run(
        node.target, "echo FIRST; head -c 200000 /dev/zero | tr '\\0' x; echo; echo LAST", timeout_seconds=10
    )
    assert result.exit_code == 0
    assert len(result.output) <= OUTPUT_LIMIT + 100
    assert result.output.startswith("FIRST")
    assert result.output.rstrip().endswith("LAST")
    assert "characters truncated" in result.output


def test_truncate_leaves_short_text_alone() -> None:
    assert truncate("short") == "short"
    cut = truncate("a" * 50 + "b" * 50, limit=20, head_chars=5)
    assert cut.startswith("aaaaa") and cut.endswith("b" * 15) and "80 characters truncated" in cut


@pytest.mark.timeout(20)
async def test_connection_refused_then_succeeding_is_retried(
    tmp_path: Path, client_key: asyncssh.SSHKey, runner: SshRunner
) -> None:
    port = free_port()
    server = LoopbackSshd(tmp_path / "late", [client_key.export_public_key("openssh").decode()], port=port)

    async def boot_late() -> None:
        await asyncio.sleep(0.5)  # the node's sshd is not up yet when the runner first knocks
        await server.start(port)

    booting = asyncio.create_task(boot_late())
    try:
        result = await runner.run(server.target, "echo up", timeout_seconds=5)
    finally:
        await booting
        await server.stop()
    assert result.ok and result.connect_attempts > 1
    assert server.commands == ["echo up"]


@pytest.mark.timeout(20)
async def test_unreachable_after_retries_names_the_node(runner: SshRunner) -> None:
    from cluster.models import SshTarget

    target = SshTarget(node_id="n9", host="127.0.0.1", port=free_port())
    with pytest.raises(SshUnreachable, match=r"node 'node09'.*after 4 attempts.*ConnectionRefused"):
        await runner.run(target, "true", timeout_seconds=1, node="node09")


@pytest.mark.timeout(20)
async def test_pinned_host_key_mismatch_is_refused_before_sending(
    tmp_path: Path, client_key: asyncssh.SSHKey, runner: SshRunner
) -> None:
    authorized = [client_key.export_public_key("openssh").decode()]
    first = LoopbackSshd(tmp_path / "a", authorized)
    await first.start()
    seen = (await runner.run(first.target, "true", timeout_seconds=5)).host_key  # trust on first use
    port = first.port
    await first.stop()
    impostor = LoopbackSshd(tmp_path / "b", authorized)  # same address, other host key
    await impostor.start(port)
    try:
        with pytest.raises(HostKeyMismatch, match="node 'controlplane'"):
            await runner.run(impostor.target, "touch stolen", timeout_seconds=5, host_key=seen, node="controlplane")
        assert impostor.commands == []
        assert impostor.connections == 1  # refused at once, not retried
        # the pinned key itself is accepted
        ok = await runner.run(impostor.target, "true", timeout_seconds=5, host_key=impostor.public_host_key)
        assert ok.ok
    finally:
        await impostor.stop()


@pytest.mark.timeout(20)
async def test_unknown_client_key_is_not_retried(node: LoopbackSshd) -> None:
    stranger = SshRunner(asyncssh.generate_private_key("ssh-ed25519"), retry=FAST)
    with pytest.raises(AuthenticationFailed):
        await stranger.run(node.target, "true", timeout_seconds=5)
    assert node.connections == 1 and node.commands == []


def test_dev_platform_key_is_generated_once_into_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    path = platform_key_path(settings)
    assert path.parent == tmp_path / "ssh" and oct(path.stat().st_mode & 0o777) == "0o600"
    first = platform_public_key(settings)
    assert first.startswith("ssh-ed25519 ") and platform_public_key(settings) == first


def test_kubevirt_backend_requires_a_configured_key(tmp_path: Path) -> None:
    from cluster.ssh import SshError

    with pytest.raises(SshError, match="ssh_private_key"):
        platform_key_path(Settings(data_dir=tmp_path, cluster_backend="kubevirt"))
