"""Fixtures for the simulated backend's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from cluster.models import ClaimRequest, ClaimWant, NodeSpec, SessionRef
from cluster.simulated import SimulatedCluster
from cluster.simulated.clock import ManualClock
from labs.models import ContainerDiskSource, Role

IMAGE = "127.0.0.1:5000/labrador/node:v1.31.2"


def spec(node_id: str, node_class: str = "cp", session: str | None = None, image: str = IMAGE) -> NodeSpec:
    return NodeSpec(
        node_id=node_id,
        node_class=node_class,
        role=Role.CONTROLPLANE if node_class == "cp" else Role.WORKER,
        image=image,
        kubernetes_version="1.31.2",
        cpu_cores=1,
        memory="1536Mi",
        disk=ContainerDiskSource(),
        session=ref(session) if session else None,
    )


def ref(session_id: str) -> SessionRef:
    return SessionRef(session_id=session_id, workflow_id=f"lab-session/{session_id}", run_id=f"run-{session_id}")


def claim(session_id: str, count: int = 1, node_class: str = "cp") -> ClaimRequest:
    return ClaimRequest(session=ref(session_id), wants=[ClaimWant(node_class=node_class, count=count)])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "simulated-cluster.sqlite"


@pytest.fixture
async def sim(state_file: Path, clock: ManualClock) -> AsyncIterator[SimulatedCluster]:
    cluster = SimulatedCluster(state_file, boot_seconds=10.0, clock=clock)
    yield cluster
    await cluster.aclose()


@pytest.fixture(scope="session")
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


async def run(
    target_host: str, port: int, key: asyncssh.SSHKey, command: str, **kwargs: object
) -> asyncssh.SSHCompletedProcess:
    async with asyncssh.connect(target_host, port, username="root", client_keys=[key], known_hosts=None) as conn:
        return await conn.run(command, **kwargs)  # type: ignore[arg-type]
