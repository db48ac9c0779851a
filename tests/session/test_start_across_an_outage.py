"""`lab start --wait` across a transient Temporal outage (#16 item 10): the connection to Temporal is cut
(a TCP proxy in front of the dev server drops every connection and refuses new ones for a few seconds)
while the CLI waits; the CLI retries (start is idempotent for the same lab) and ends with the SSH
details, exit 0, instead of "transport error" and a lab it then refuses as "already has lab"."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from typer.testing import CliRunner

from labrador.cli.main import app

from .conftest import Stack

pytestmark = pytest.mark.timeout(120)


class CuttableProxy:
    """127.0.0.1:port -> target; `cut()` closes every connection and stops listening until `restore()`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def restore(self) -> None:
        await self.start()


async def test_start_wait_survives_a_temporal_outage(stack: Stack) -> None:
    stack.settings = stack.settings.model_copy(update={"sim_boot_seconds": 6.0})  # the wait spans the cut
    await stack.start_worker()
    host, port = stack.settings.temporal_address.rsplit(":", 1)
    proxy = CuttableProxy(host, int(port))
    await proxy.start()
    who = f"st-{uuid.uuid4().hex[:8]}"
    env = {"LABRADOR_TEMPORAL_ADDRESS": f"127.0.0.1:{proxy.port}", "LABRADOR_TASK_QUEUE": stack.settings.task_queue,
           "LABRADOR_DATA_DIR": str(stack.settings.data_dir), "XDG_STATE_HOME": str(stack.settings.data_dir / "st"),
           "HOME": str(stack.settings.data_dir)}
    args = ["lab", "start", "--student", who, "--lab", "sandbox", "--wait", "--timeout", "60"]
    running = asyncio.create_task(asyncio.to_thread(CliRunner().invoke, app, args, env=env))
    await asyncio.sleep(2.5)  # started, now waiting for the nodes to boot
    await proxy.cut()
    await asyncio.sleep(10)  # longer than the client's own retries of one call (~3 s)
    await proxy.restore()
    result = await running
    assert result.exit_code == 0, result.output
    assert "ssh -i" in result.output
    await stack.labs.end(who)
