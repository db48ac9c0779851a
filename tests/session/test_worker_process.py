"""`python worker.py` (the production entry point) stops cleanly on SIGTERM, as a pod being replaced does."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


async def test_sigterm_stops_polling_and_exits_0(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "LABRADOR_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
           "LABRADOR_TASK_QUEUE": f"lab-{uuid.uuid4().hex[:8]}", "LABRADOR_DATA_DIR": str(tmp_path),
           "LABRADOR_CLUSTER_BACKEND": "simulated", "LABRADOR_WORKER_GRACEFUL_SHUTDOWN": "5s",
           "LABRADOR_WORKER_DEPLOYMENT_NAME": f"labrador-{uuid.uuid4().hex[:6]}", "LABRADOR_WORKER_BUILD_ID": "1.0.0"}
    env.pop("LABRADOR_CONFIG", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "worker.py"), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    log: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not any("worker on" in line for line in log):
                line = (await process.stdout.readline()).decode()
                assert line, f"the worker exited before running: {''.join(log)}"
                log.append(line)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            rest, _ = await process.communicate()
        log.append(rest.decode())
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = "".join(log)
    assert process.returncode == 0, output
    assert "stop requested" in output and "Traceback" not in output
