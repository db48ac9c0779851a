"""`labrador dev`: a whole stack on one machine.

`temporal server start-dev` (state in a SQLite file under the data directory, Web UI, the search
attributes registered), the worker with the simulated cluster in this process, and a state file
(`labrador.settings.dev_state_file()`) through which every other command finds the stack without
flags. Stops cleanly on Ctrl-C or SIGTERM: worker first (running activities finish or are cancelled),
then the server, then the state file goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from temporalio.client import Client
from temporalio.runtime import Runtime

from labrador.api.keys import ensure_dev_api_keys, keys_from_settings
from labrador.api.server import build_server, serve, wait_started
from labrador.binaries import temporal_cli
from labrador.client import LabClient
from labrador.codec import codec_from_settings, ensure_dev_codec_keys
from labrador.metrics import Collector, metrics_runtime
from labrador.schedules import apply_schedules
from labrador.settings import DevStackNotReady, Settings, dev_state_file, load_settings, running_dev_stack
from labrador.temporal import connect
from workflows import search_attributes

log = logging.getLogger("labrador.dev")

SERVER_START_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 15.0


class DevStackError(RuntimeError):
    pass


def _port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError:
            return False
    return True


@dataclass
class DevStackConfig:
    data_dir: Path
    port: int = 7233
    ui_port: int = 8233
    ip: str = "127.0.0.1"
    log_level: str = "warn"
    api_port: int = 8088
    metrics_port: int = 9464

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.ip}:{self.ui_port}"

    @property
    def api_address(self) -> str:
        return f"{self.ip}:{self.api_port}"

    @property
    def metrics_address(self) -> str:
        return f"{self.ip}:{self.metrics_port}"


def server_command(config: DevStackConfig) -> list[str]:
    command = [
        str(temporal_cli()), "server", "start-dev",
        "--db-filename", str(config.data_dir / "temporal.sqlite"),
        "--ip", config.ip,
        "--port", str(config.port),
        "--ui-port", str(config.ui_port),
        "--namespace", "default",
        "--log-level", config.log_level,
    ]
    for key in search_attributes.ALL:
        command += ["--search-attribute", f"{key.name}=Keyword"]
    return command


def write_state(path: Path, settings: Settings, ui_url: str, *, ready: bool = True) -> None:
    """The state file other commands find the stack by. `ready: false` while starting: commands wait
    for it (labrador.settings.running_dev_stack) instead of reaching a server whose codec key is not
    published yet."""
    state = {
        "pid": os.getpid(),
        "ready": ready,
        "ui_url": ui_url,
        "api_url": f"http://{settings.api_address}",
        "settings": {
            "temporal_address": settings.temporal_address,
            "temporal_namespace": settings.temporal_namespace,
            "task_queue": settings.task_queue,
            "data_dir": str(settings.data_dir),
            "cluster_backend": settings.cluster_backend,
            **({"codec_keys_file": str(settings.codec_keys_file)} if settings.codec_keys_file else {}),
            "api_address": settings.api_address,
            **({"api_keys_file": str(settings.api_keys_file)} if settings.api_keys_file else {}),
            **({"metrics_address": settings.metrics_address} if settings.metrics_address else {}),
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".dev.")
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=2)
    os.replace(tmp, path)


def remove_state(path: Path) -> None:
    """Remove the state file if it is ours (another stack may have replaced it)."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


class DevStack:
    def __init__(self, config: DevStackConfig, *, flags: dict[str, Any] | None = None) -> None:
        self.config = config
        self.flags = flags or {}
        self.server: subprocess.Popen[bytes] | None = None
        self._server_log: IO[bytes] | None = None

    async def run(self, stop: asyncio.Event, on_ready: Callable[[Settings], None] | None = None) -> None:
        try:
            other = running_dev_stack()
        except DevStackNotReady:
            other = {"starting": True}
        if other:
            raise DevStackError(f"a dev stack is already running (see {dev_state_file()}); stop it first")
        ports = (("--port", self.config.port), ("--ui-port", self.config.ui_port),
                 ("--api-port", self.config.api_port), ("--metrics-port", self.config.metrics_port))
        for what, port in ports:
            if not _port_free(self.config.ip, port):
                raise DevStackError(f"{what}: {self.config.ip}:{port} is already in use (another labrador dev or "
                                    "Temporal?); stop it or choose another port")
        try:
            self.config.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DevStackError(f"--data-dir: cannot create {self.config.data_dir}: {exc.strerror}") from None
        settings = load_settings(
            {
                **self.flags,
                "temporal_address": self.config.address,
                "data_dir": self.config.data_dir,
                "cluster_backend": "simulated",
                "api_address": self.config.api_address,
                "metrics_address": self.config.metrics_address,
            },
            use_dev_stack=False,
        )
        # Dev histories are encrypted like production ones; the key file is published in the state file.
        settings = ensure_dev_codec_keys(settings)
        # The HTTP API needs keys: one per scope in the data dir unless configured (printed in the banner).
        settings = ensure_dev_api_keys(settings)
        # Configured keys are read now: a key file others can read (or a bad key) is refused at once,
        # not retried as "temporal server not reachable" for a minute.
        codec_from_settings(settings)
        keys_from_settings(settings)
        state_file = dev_state_file()
        # Published before the server starts: a command run meanwhile waits for "ready" instead of
        # reaching the server without the codec key (and starting a lab in plaintext).
        write_state(state_file, settings, self.config.ui_url, ready=False)
        try:
            runtime = metrics_runtime(settings)  # the worker's /metrics (SDK + labrador_* metrics)
            client = await self._start_server(settings, runtime)
            from worker import build_port, build_workers

            port = build_port(settings)
            workers = build_workers(client, settings, port)
            # The pool refills (and images rebuild) on their schedules in dev too, as in production.
            await apply_schedules(client, settings)
            api = build_server(settings, LabClient(client, settings))
            api_stop = asyncio.Event()
            api_task = asyncio.create_task(serve(api, api_stop))
            await wait_started(api, api_task)
            write_state(state_file, settings, self.config.ui_url, ready=True)
            if on_ready is not None:
                on_ready(settings)
            collector = Collector(client, settings, port, runtime.metric_meter) if runtime else None
            sampling = asyncio.create_task(collector.run()) if collector else None
            running: asyncio.Future[Any] = asyncio.gather(*(worker.run() for worker in workers), api_task)
            stop_task: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait([running, stop_task], return_when=asyncio.FIRST_COMPLETED)
            if running in done:
                stop_task.cancel()
                running.result()  # a worker died: say why
            else:
                api_stop.set()
                await asyncio.gather(*(worker.shutdown() for worker in workers))
                with contextlib.suppress(asyncio.CancelledError):
                    await running
            if sampling is not None:
                sampling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampling
            close = getattr(port, "aclose", None)
            if close is not None:
                await close()
        finally:
            remove_state(state_file)
            await self._stop_server()

    def _spawn_server(self) -> subprocess.Popen[bytes]:
        self._server_log = open(self.config.data_dir / "temporal.log", "ab")
        return subprocess.Popen(
            server_command(self.config),
            stdout=self._server_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our shutdown order, not the terminal's Ctrl-C, stops it
        )

    async def _start_server(self, settings: Settings, runtime: Runtime | None = None) -> Client:
        self.server = self._spawn_server()
        deadline = asyncio.get_running_loop().time() + SERVER_START_TIMEOUT
        last_error: Exception | None = None
        while asyncio.get_running_loop().time() < deadline:
            if self.server.poll() is not None:
                raise DevStackError(
                    f"temporal server exited with {self.server.returncode}; see {self.config.data_dir / 'temporal.log'}"
                )
            try:
                client = await connect(settings, runtime)
                await client.service_client.check_health()
                return client
            except Exception as exc:  # not up yet
                last_error = exc
                await asyncio.sleep(0.2)
        raise DevStackError(f"temporal server not reachable on {self.config.address}: {last_error}")

    async def _stop_server(self) -> None:
        server = self.server
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(server.wait, SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                server.kill()
                await asyncio.to_thread(server.wait)
        if self._server_log is not None:
            self._server_log.close()
