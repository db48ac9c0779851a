"""`labrador dev` serves the API (and the worker's metrics) and says where, with generated keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def request(url: str, key: str | None = None, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@pytest.mark.timeout(150)
def test_dev_stack_serves_the_api_with_generated_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABRADOR_")}
    env.update(XDG_STATE_HOME=str(tmp_path / "state"), HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    state_file = tmp_path / "state" / "labrador" / "dev.json"
    ports = {name: free_port() for name in ("port", "ui-port", "api-port", "metrics-port")}
    dev = subprocess.Popen(
        [sys.executable, "-m", "labrador", "dev", "--data-dir", str(tmp_path / "data"),
         *[arg for name, port in ports.items() for arg in (f"--{name}", str(port))]],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not _ready(state_file) and dev.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ready(state_file), "the dev stack did not come up"
        state = json.loads(state_file.read_text())
        api = state["api_url"]
        assert api == f"http://127.0.0.1:{ports['api-port']}"
        keys_file = Path(state["settings"]["api_keys_file"])
        assert keys_file.parent == tmp_path / "data" and keys_file.stat().st_mode & 0o777 == 0o600
        keys = dict(line.split(":", 1) for line in keys_file.read_text().split())
        assert set(keys) == {"app", "admin"}

        assert request(f"{api}/readyz") == (200, {"status": "ok"})
        status, started = request(f"{api}/v1/sessions", keys["app"],
                                  {"student_id": "dana", "lab": "apiserver-manifest-typo", "wait_seconds": 60})
        assert status == 201 and started["ready"] and "PRIVATE KEY" in started["ssh"]["private_key"]
        status, pool = request(f"{api}/v1/pool", keys["admin"])
        assert status == 200 and pool["schedule"]["exists"]
        status, _ended = request(f"{api}/v1/sessions/dana/end", keys["app"], {"reason": "done"})
        assert status == 202
        assert state["settings"]["metrics_address"] == f"127.0.0.1:{ports['metrics-port']}"
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics-port']}/metrics", timeout=10) as answer:
            names = {family.name for family in text_string_to_metric_families(answer.read().decode())}
        assert "labrador_session_start_to_ready_seconds" in names and any(n.startswith("temporal_") for n in names)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "labrador", *args], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=60)

        dry = cli("admin", "end", "--lab", "sandbox", "--reason", "maintenance", "--dry-run", "--json")
        assert dry.returncode == 0 and json.loads(dry.stdout)["count"] == 0, dry.stderr
        unknown = cli("admin", "end", "--lab", "nope", "--reason", "maintenance")
        assert unknown.returncode == 1 and "lab: 'nope' is not in the catalog" in unknown.stderr
        bulk = cli("admin", "end", "--all", "--reason", "maintenance", "--json")
        assert bulk.returncode == 0 and json.loads(bulk.stdout)["status"] == "completed", bulk.stderr
        dead = cli("webhooks", "dead", "--json")
        assert dead.returncode == 0 and json.loads(dead.stdout) == [], dead.stderr
    finally:
        dev.send_signal(signal.SIGTERM)
        output, _ = dev.communicate(timeout=30)
    assert dev.returncode == 0, output
    assert f"HTTP API http://127.0.0.1:{ports['api-port']} (keys in {keys_file})" in output
    assert f"metrics http://127.0.0.1:{ports['metrics-port']}/metrics" in output


def _ready(state_file: Path) -> bool:
    """The state file appears at once with "ready": false; true once the stack serves."""
    try:
        return bool(json.loads(state_file.read_text()).get("ready"))
    except (OSError, ValueError):
        return False
