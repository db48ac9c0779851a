"""The backends the cluster-port contract runs against.

Adding a backend is one entry in BACKENDS: a factory that yields a `Backend` (the port plus the few
test-side hooks the contract needs) and the set of markers the backend cannot honour. A case marked
with such a marker is skipped for that backend only, with the reason shown by `-ra`.

Markers:
- needs_real_concurrency: exclusivity under truly concurrent writers (the kubevirt backend passes
  it on our emulator, which refuses stale resourceVersions on namespaces like the API server).
- needs_label_selectors: list filtering by label selector (our emulator applies equality selectors).
- needs_ssh_server: the backend serves a reachable SSH endpoint that records commands.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from cluster.port import ClusterPort
from cluster.simulated import SimulatedCluster
from cluster.simulated.clock import ManualClock

MARKERS = {
    "needs_real_concurrency": "needs exclusive claims under truly concurrent writers",
    "needs_label_selectors": "needs list filtering by label selector",
    "needs_ssh_server": "needs a reachable SSH endpoint that records commands",
}


@dataclass
class Backend:
    name: str
    port: ClusterPort
    make_ready: Callable[[str], Awaitable[None]]
    """Let the node become ready (simulated: boot latency passes; kubevirt: the VMI reports Ready)."""
    commands: Callable[[str], list[str]] | None = None
    """SSH commands the node received, in order (None: not observable on this backend)."""
    extras: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendKind:
    factory: Callable[[Path], AbstractAsyncContextManager[Backend]]
    unsupported: frozenset[str] = frozenset()


@asynccontextmanager
async def simulated_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    clock = ManualClock()
    boot_seconds = 30.0
    sim = SimulatedCluster(tmp_path / "simulated-cluster.sqlite", boot_seconds=boot_seconds, clock=clock)

    async def make_ready(node_id: str) -> None:
        clock.advance(boot_seconds)

    try:
        yield Backend("simulated", sim, make_ready, sim.commands, {"sim": sim, "clock": clock})
    finally:
        await sim.aclose()


@asynccontextmanager
async def kubevirt_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """The kubevirt backend as the worker runs it (reads from its list+watch cache) over HTTP
    against kmock's emulator (completed in tests/kubevirt/emulator.py); `make_ready` plays
    virt-controller (the VMI runs, is Ready and has a pod IP) and waits for the cache to see it."""
    import kmock
    from kubernetes import client

    from cluster.kubevirt.api import AsyncKubeApi, KubeApi
    from cluster.kubevirt.backend import KubeVirtCluster
    from cluster.kubevirt.cache import ClusterCache
    from tests.kubevirt.conftest import caught_up
    from tests.kubevirt.emulator import LabEmulator, VirtController

    async with LabEmulator() as emulator, kmock.Server(emulator):
        configuration = client.Configuration()
        configuration.host = str(emulator.url).rstrip("/")
        api_client = client.ApiClient(configuration)
        sync_api = KubeApi(api_client, timeout=(2.0, 10.0))
        cache = ClusterCache(sync_api, page_size=3)
        cluster = KubeVirtCluster(
            AsyncKubeApi(sync_api),
            orchestrator_namespace="labrador",
            external_host="127.0.0.1",
            ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIContractTestKeyOnly contract",
            cache=cache,
        )
        virt = VirtController(emulator)
        addresses: dict[str, str] = {}

        async def make_ready(node_id: str) -> None:
            addresses.setdefault(node_id, f"10.244.0.{len(addresses) + 10}")
            virt.running(node_id, addresses[node_id])
            await caught_up(cache, emulator)

        try:
            yield Backend("kubevirt", cluster, make_ready, None, {"emulator": emulator, "virt": virt})
        finally:
            await cluster.close()
            emulator.end_watches()
            api_client.close()


BACKENDS: dict[str, BackendKind] = {
    "simulated": BackendKind(simulated_backend),
    # Our emulator applies label selectors and honours resourceVersion preconditions on namespaces
    # (where claims happen); it serves no SSH.
    "kubevirt": BackendKind(kubevirt_backend, unsupported=frozenset({"needs_ssh_server"})),
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    kind = BACKENDS[request.param]
    for marker in request.node.iter_markers():
        if marker.name in kind.unsupported:
            pytest.skip(f"{request.param} backend cannot honour {marker.name}: {MARKERS[marker.name]}")
    async with kind.factory(tmp_path) as made:
        yield made


@pytest.fixture
def port(backend: Backend) -> ClusterPort:
    return backend.port


@pytest.fixture(scope="session")
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")
