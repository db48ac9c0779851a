"""Two workers on one simulated data dir (#16 item 11): SSH listeners follow the store whichever process
opened them. An ended lab's port stops answering even when another worker released it; a lab whose
exposing worker died gets its port back from the other worker; no worker moves a student's port."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncssh
import pytest

from cluster.simulated import SimulatedCluster
from tests.cluster.conftest import run, spec

pytestmark = pytest.mark.timeout(60)


async def answers(port: int, key: asyncssh.SSHKey) -> bool:
    try:
        result = await asyncio.wait_for(run("127.0.0.1", port, key, "hostname"), 5)
    except (OSError, asyncssh.Error, TimeoutError):
        return False
    return result.exit_status == 0


async def eventually(port: int, key: asyncssh.SSHKey, expected: bool, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while (await answers(port, key)) != expected:
        assert time.monotonic() < deadline, f"port {port} still {'closed' if expected else 'answering'}"
        await asyncio.sleep(0.2)


async def test_a_released_lab_stops_answering_whichever_worker_released_it(
    tmp_path: Path, client_key: asyncssh.SSHKey
) -> None:
    state = tmp_path / "simulated-cluster.sqlite"
    first, second = SimulatedCluster(state), SimulatedCluster(state)
    try:
        await first.provision(spec("cp-1", session="s1"))
        endpoint = await first.expose("s1", "cp-1")
        await second.inventory()  # the second worker starts and restores what the store holds
        await eventually(endpoint.port, client_key, True)
        assert (await second.expose("s1", "cp-1")).port == endpoint.port  # the student's port never moves
        await second.release("s1")  # the lab ends through the other worker
        await eventually(endpoint.port, client_key, False)
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_lab_whose_exposing_worker_died_answers_again_from_the_other(
    tmp_path: Path, client_key: asyncssh.SSHKey
) -> None:
    state = tmp_path / "simulated-cluster.sqlite"
    first, second = SimulatedCluster(state), SimulatedCluster(state)
    try:
        await first.provision(spec("cp-1", session="s1"))
        endpoint = await first.expose("s1", "cp-1")
        await second.inventory()
        await first.aclose()  # the exposing worker dies: its listeners close with it
        await eventually(endpoint.port, client_key, True)  # ... and the other worker serves the port
        await second.release("s1")
        await eventually(endpoint.port, client_key, False)
    finally:
        await first.aclose()
        await second.aclose()


async def test_many_labs_leave_no_listener_behind(tmp_path: Path, client_key: asyncssh.SSHKey) -> None:
    state = tmp_path / "simulated-cluster.sqlite"
    first, second = SimulatedCluster(state), SimulatedCluster(state)
    try:
        ports = []
        for i in range(10):
            await first.provision(spec(f"cp-{i}", session=f"s{i}"))
            ports.append((await (first if i % 2 else second).expose(f"s{i}", f"cp-{i}")).port)
        await second.inventory()
        for i in range(10):
            await (second if i % 2 else first).release(f"s{i}")
        # The other worker notices within its follow interval (1 s); a loaded machine gets longer.
        for port in ports:
            await eventually(port, client_key, False)
    finally:
        await first.aclose()
        await second.aclose()
