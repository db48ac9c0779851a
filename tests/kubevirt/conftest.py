"""Fixtures for the kubevirt backend: a completed kmock emulator over HTTP, the backend on it."""

from __future__ import annotations

import asyncio
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
from cluster.kubevirt.cache import ClusterCache
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
        emu.end_watches()  # open watch streams would hold the server's shutdown


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


def make_cluster(sync_api: KubeApi, public_key: str, clock: Clock, cache: ClusterCache | None = None
                 ) -> KubeVirtCluster:
    return KubeVirtCluster(
        AsyncKubeApi(sync_api),
        orchestrator_namespace="labrador",
        external_host="labs.example.test",
        ssh_public_key=public_key,
        clone_policy=ClonePolicy(stall_timeout=timedelta(seconds=60), restart_limit=2, max_attempts=3,
                                 backoff=timedelta(seconds=10)),
        clock=clock,
        cache=cache,
    )


@pytest.fixture
def cluster(sync_api: KubeApi, platform_key: tuple[Path, str], clock: Clock) -> KubeVirtCluster:
    """The backend without a cache: every read goes to the API (what it does while its cache is
    not listed yet or its watch is down)."""
    return make_cluster(sync_api, platform_key[1], clock)


@pytest.fixture
async def cached(sync_api: KubeApi, platform_key: tuple[Path, str], clock: Clock
                 ) -> AsyncIterator[KubeVirtCluster]:
    """The backend as the worker runs it: reads from its list+watch cache, already listed."""
    cluster = make_cluster(sync_api, platform_key[1], clock, ClusterCache(sync_api, page_size=2))
    assert cluster.cache is not None and await cluster.cache.wait_synced(5)
    yield cluster
    await cluster.close()


async def caught_up(cache: ClusterCache, emulator: LabEmulator, seconds: float = 5.0) -> None:
    """Wait until the cache has seen every change the emulator made so far (bookmarks carry the
    version to watches of resources that did not change): the end of "eventually" in a test."""
    target = emulator.last_event_version
    assert await cache.wait_synced(seconds)
    async with asyncio.timeout(seconds):
        while any(int(r.version or 0) < target for r in cache.reflectors.values()):
            emulator.bookmark()
            await asyncio.sleep(0.01)


@pytest.fixture
def virt(emulator: LabEmulator) -> VirtController:
    return VirtController(emulator)
