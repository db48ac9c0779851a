"""Fixtures for the kubevirt backend: a completed kmock emulator over HTTP, the backend on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import kmock
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from kubernetes import client

from cluster.kubevirt.api import AsyncKubeApi, KubeApi
from cluster.kubevirt.backend import KubeVirtCluster, public_key_from_private
from cluster.kubevirt.status import ClonePolicy
from tests.kubevirt.emulator import LabEmulator, VirtController


@pytest.fixture(scope="session")
def platform_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path_factory.mktemp("keys") / "id_ed25519"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path, public_key_from_private(path)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def emulator() -> AsyncIterator[LabEmulator]:
    async with LabEmulator() as emu, kmock.Server(emu):
        yield emu


def api_for(emulator: LabEmulator) -> KubeApi:
    configuration = client.Configuration()
    configuration.host = str(emulator.url).rstrip("/")
    return KubeApi(client.ApiClient(configuration), timeout=(2.0, 10.0))


@pytest.fixture
def sync_api(emulator: LabEmulator) -> KubeApi:
    return api_for(emulator)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cluster(sync_api: KubeApi, platform_key: tuple[Path, str], clock: Clock) -> KubeVirtCluster:
    return KubeVirtCluster(
        AsyncKubeApi(sync_api),
        orchestrator_namespace="labrador",
        external_host="labs.example.test",
        ssh_public_key=platform_key[1],
        clone_policy=ClonePolicy(stall_timeout=timedelta(seconds=60), restart_limit=2, max_attempts=3,
                                 backoff=timedelta(seconds=10)),
        clock=clock,
    )


@pytest.fixture
def virt(emulator: LabEmulator) -> VirtController:
    return VirtController(emulator)
