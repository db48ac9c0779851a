"""The backend's list+watch cache against the emulator: paged lists, a watch that ends, 410 Gone,
an object changed between the list and the watch, a cache behind the cluster during claims, and
the ready wait woken by the watch instead of polling."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.cluster_activities import ClusterActivities
from cluster.kubevirt import labels as L
from cluster.kubevirt.api import NAMESPACES as NAMESPACE_RESOURCE
from cluster.kubevirt.api import PERMISSIONS, KubeApi
from cluster.kubevirt.api import VIRTUAL_MACHINE_INSTANCES as VMIS_RESOURCE
from cluster.kubevirt.backend import KubeVirtCluster
from cluster.kubevirt.cache import ClusterCache, slim, version_newer
from cluster.models import ClaimRequest, ClaimWant, NodePhase
from tests.kubevirt.conftest import Clock, caught_up, make_cluster
from tests.kubevirt.emulator import NAMESPACES, VMIS, LabEmulator, VirtController
from tests.kubevirt.test_backend import ref, spec
from workflows.models import WaitReadyInput

pytestmark = pytest.mark.timeout(30)


def cache_of(cluster: KubeVirtCluster) -> ClusterCache:
    assert cluster.cache is not None
    return cluster.cache


def lists_of(emulator: LabEmulator, mark: int, path: str) -> list[str]:
    return [query for method, p, query in emulator.requests_since(mark) if method == "GET" and p == path]


def watches_of(emulator: LabEmulator, mark: int, path: str) -> list[str]:
    return [query for method, p, query in emulator.requests_log[mark:]
            if method == "GET" and p == path and "watch=true" in query]


async def free_pool(cluster: KubeVirtCluster, *node_ids: str) -> None:
    for node_id in node_ids:
        await cluster.provision(spec(node_id))
        await cluster.mark_free(node_id)


async def eventually(check: Any, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 (a condition of another component's state)
            await asyncio.sleep(0.01)


async def test_the_first_list_is_paged_and_the_cache_answers_without_requests(
    cluster: KubeVirtCluster, sync_api: KubeApi, emulator: LabEmulator, platform_key: tuple[Any, str], clock: Clock
) -> None:
    await free_pool(cluster, "pool-a", "pool-b", "pool-c", "pool-d", "pool-e")
    mark = len(emulator.requests_log)
    cached = make_cluster(sync_api, platform_key[1], clock, ClusterCache(sync_api, page_size=2))
    try:
        inventory = await cached.inventory()
        assert sorted(n.node_id for n in inventory.nodes) == ["pool-a", "pool-b", "pool-c", "pool-d", "pool-e"]
        pages = lists_of(emulator, mark, "/api/v1/namespaces")
        assert len(pages) == 3 and all("limit=2" in q for q in pages)
        assert "continue=" not in pages[0] and all("continue=" in q for q in pages[1:])
        # Listed and watching: the readings of a start and of health checks cost no request.
        mark = len(emulator.requests_log)
        for node_id in ("pool-a", "pool-b", "pool-c"):
            assert (await cached.node_status(node_id)).phase == NodePhase.NOT_READY
        await cached.inventory()
        assert emulator.requests_since(mark) == []
    finally:
        await cached.close()


async def test_an_expired_continue_token_lists_again_from_the_start(
    cluster: KubeVirtCluster, sync_api: KubeApi, emulator: LabEmulator, platform_key: tuple[Any, str], clock: Clock
) -> None:
    await free_pool(cluster, "pool-a", "pool-b", "pool-c")
    emulator.inject("GET", r"^/api/v1/namespaces$", 410, query="continue=", message="continue token too old")
    cached = make_cluster(sync_api, platform_key[1], clock, ClusterCache(sync_api, page_size=2))
    try:
        assert len((await cached.inventory()).nodes) == 3
        stats = cache_of(cached).reflectors[NAMESPACE_RESOURCE].stats
        assert (stats.gone, stats.lists, stats.pages) == (1, 1, 3)  # page 1, page 2 (410), then 2 pages
    finally:
        await cached.close()


async def test_a_watch_the_server_ends_is_resumed_from_the_last_version_without_a_list(
    cached: KubeVirtCluster, emulator: LabEmulator, virt: VirtController
) -> None:
    await cached.provision(spec("n1"))
    await caught_up(cache_of(cached), emulator)
    seen = cache_of(cached).reflectors[NAMESPACE_RESOURCE].version
    mark = len(emulator.requests_log)
    emulator.end_watches()
    virt.running("n1", "10.244.1.7")  # while no watch is open
    await caught_up(cache_of(cached), emulator)
    assert (await cached.node_status("n1")).phase == NodePhase.READY
    resumed = watches_of(emulator, mark, "/api/v1/namespaces")
    assert resumed and f"resourceVersion={seen}" in resumed[0]
    assert lists_of(emulator, mark, "/api/v1/namespaces") == []  # no relist
    assert all(r.stats.lists == 1 for r in cache_of(cached).reflectors.values())


async def test_410_gone_in_the_stream_relists_and_loses_nothing(
    cached: KubeVirtCluster, emulator: LabEmulator, virt: VirtController
) -> None:
    await cached.provision(spec("n1"))
    await cached.provision(spec("n2"))
    await caught_up(cache_of(cached), emulator)
    emulator.compact()  # every open watch ends; resuming from any version seen so far answers 410
    virt.running("n1", "10.244.1.7")
    await cached.delete_node("n2")
    await caught_up(cache_of(cached), emulator)
    assert (await cached.node_status("n1")).phase == NodePhase.READY
    assert [n.node_id for n in (await cached.inventory()).nodes] == ["n1"]
    stats = cache_of(cached).reflectors[NAMESPACE_RESOURCE].stats
    assert stats.gone >= 1 and stats.lists >= 2


async def test_410_as_the_watch_answer_relists_too(cached: KubeVirtCluster, emulator: LabEmulator) -> None:
    await cached.provision(spec("n1"))
    await caught_up(cache_of(cached), emulator)
    emulator.inject("GET", r"^/api/v1/namespaces$", 410, query="watch=true", message="too old resource version")
    emulator.end_watches()
    stats = cache_of(cached).reflectors[NAMESPACE_RESOURCE].stats
    await eventually(lambda: stats.lists == 2)
    assert stats.gone == 1
    await caught_up(cache_of(cached), emulator)
    assert [n.node_id for n in (await cached.inventory()).nodes] == ["n1"]


async def test_an_object_changed_between_the_list_and_the_watch_is_seen(
    cluster: KubeVirtCluster, sync_api: KubeApi, emulator: LabEmulator, virt: VirtController,
    platform_key: tuple[Any, str], clock: Clock
) -> None:
    await cluster.provision(spec("n1"))
    await cluster.provision(spec("n2"))
    virt.vmi("n1", "Scheduled")
    # Right after the VMIs are listed (and before their watch starts), n1 becomes ready and
    # n2's namespace goes: the watch from the list's version must bring both.
    emulator.after_list(VMIS, lambda: virt.running("n1", "10.244.1.7"))
    emulator.after_list(NAMESPACES, lambda: emulator.modify(
        NAMESPACES, None, "lab-n2", lambda ns: ns["metadata"].__setitem__("deletionTimestamp", "2026-01-01T00:00:00Z")))
    cached = make_cluster(sync_api, platform_key[1], clock, ClusterCache(sync_api))
    try:
        assert await cache_of(cached).wait_synced(5)
        await caught_up(cache_of(cached), emulator)
        assert (await cached.node_status("n1")).phase == NodePhase.READY
        assert (await cached.node_status("n2")).phase == NodePhase.MISSING
        assert [n.node_id for n in (await cached.inventory()).nodes] == ["n1"]
    finally:
        await cached.close()


async def test_a_claim_from_a_cache_behind_the_cluster_stays_exclusive(
    cached: KubeVirtCluster, cluster: KubeVirtCluster, emulator: LabEmulator
) -> None:
    """Another worker claims a node our cache still shows free: our patch carries the old
    resourceVersion, the API answers 409, we take the next node."""
    await free_pool(cached, "pool-a", "pool-b")
    await caught_up(cache_of(cached), emulator)
    emulator.inject("GET", r"^/api/v1/namespaces$", 503, query="watch=true", times=1000)
    emulator.end_watches()  # our cache hears nothing more for now (still "fresh": a short outage)
    other = await cluster.claim(ClaimRequest(session=ref("s1"), wants=[ClaimWant(node_class="cp", count=1)]))
    (taken,) = [n.node_id for n in other.nodes]
    ours = await cached.claim(ClaimRequest(session=ref("s2"), wants=[ClaimWant(node_class="cp", count=2)]))
    assert [n.node_id for n in ours.nodes] == [({"pool-a", "pool-b"} - {taken}).pop()]
    ns = emulator.live(NAMESPACES, None, f"lab-{taken}")
    assert ns is not None and ns["metadata"]["labels"][L.SESSION] == "s1"


async def test_a_retried_claim_from_a_cache_behind_its_first_attempt_claims_nothing_more(
    cached: KubeVirtCluster, cluster: KubeVirtCluster, emulator: LabEmulator
) -> None:
    """The first attempt ran on another worker; this cache has not seen it. The 409 on the node
    it won is read again: it is ours, so it counts, and no second node is taken."""
    await free_pool(cached, "pool-a", "pool-b", "pool-c")
    await caught_up(cache_of(cached), emulator)
    emulator.inject("GET", r"^/api/v1/namespaces$", 503, query="watch=true", times=1000)
    emulator.end_watches()
    request = ClaimRequest(session=ref("s1"), wants=[ClaimWant(node_class="cp", count=1)])
    (first,) = (await cluster.claim(request)).nodes
    (again,) = (await cached.claim(request)).nodes
    assert again.node_id == first.node_id
    holders = [emulator.live(NAMESPACES, None, f"lab-pool-{x}") for x in "abc"]
    assert sum(1 for ns in holders if ns and ns["metadata"]["labels"].get(L.SESSION) == "s1") == 1


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "direct"])
async def test_a_listed_free_node_deleted_before_the_patch_is_passed_by(
    cached: KubeVirtCluster, cluster: KubeVirtCluster, emulator: LabEmulator, use_cache: bool
) -> None:
    """The node was listed free, then deleted before our claim patch: 404 means "next node",
    not a failed session."""
    claimer = cached if use_cache else cluster
    await free_pool(claimer, "pool-a", "pool-b")
    await caught_up(cache_of(cached), emulator)
    fault = emulator.inject("PATCH", r"^/api/v1/namespaces/lab-pool-[ab]$", 404,
                            message='namespaces "lab-pool-x" not found')
    result = await claimer.claim(ClaimRequest(session=ref("s1"), wants=[ClaimWant(node_class="cp", count=1)]))
    assert len(fault.hits) == 1
    gone = fault.hits[0].rsplit("/lab-", 1)[1]
    assert [n.node_id for n in result.nodes] == [({"pool-a", "pool-b"} - {gone}).pop()]


async def test_the_ready_wait_wakes_on_the_watch_event_not_on_a_poll(
    cached: KubeVirtCluster, emulator: LabEmulator, virt: VirtController
) -> None:
    await cached.provision(spec("n1"))
    await caught_up(cache_of(cached), emulator)
    mark = len(emulator.requests_log)

    async def boots() -> None:
        await asyncio.sleep(0.3)
        virt.running("n1", "10.244.1.7")

    started = time.monotonic()
    booting = asyncio.create_task(boots())
    # A 30 s poll interval: a wait that polled would not see the node before 30 s.
    status = await ActivityEnvironment().run(ClusterActivities(cached).wait_node_ready,
                                             WaitReadyInput(node_id="n1", poll_interval=timedelta(seconds=30)))
    await booting
    assert status.phase == NodePhase.READY and status.address == "10.244.1.7"
    assert time.monotonic() - started < 3
    assert emulator.requests_since(mark) == []  # not one GET while waiting


async def test_reads_go_direct_while_the_watch_is_down_for_long(
    sync_api: KubeApi, emulator: LabEmulator, virt: VirtController, platform_key: tuple[Any, str], clock: Clock
) -> None:
    cached = make_cluster(sync_api, platform_key[1], clock, ClusterCache(sync_api, stale_after=0.2))
    try:
        await cached.provision(spec("n1"))
        assert await cache_of(cached).wait_synced(5)
        emulator.inject("GET", r"/virtualmachineinstances$", 503, query="watch=true", times=1000)
        emulator.end_watches()
        await asyncio.sleep(0.5)
        virt.running("n1", "10.244.1.7")  # the cache cannot hear it
        mark = len(emulator.requests_log)
        assert (await cached.node_status("n1")).phase == NodePhase.READY
        assert any(path.endswith("/virtualmachineinstances/n1") for _, path, _ in emulator.requests_since(mark))
    finally:
        await cached.close()


async def test_every_cached_call_is_a_declared_permission(cached: KubeVirtCluster, sync_api: KubeApi) -> None:
    await cached.provision(spec("n1"))
    await cached.inventory()
    declared = {(g, r, v) for g, r, v, _ in PERMISSIONS}
    assert sync_api.calls <= declared
    watched = {(g, r) for g, r, v in sync_api.calls if v == "watch"}
    assert watched == {("", "namespaces"), ("", "services"), ("networking.k8s.io", "networkpolicies"),
                       ("kubevirt.io", "virtualmachines"), ("kubevirt.io", "virtualmachineinstances")}
    assert {(g, r) for g, r, v, _ in PERMISSIONS if v == "watch"} == watched  # no watch we do not use


def test_version_comparison_and_slimming() -> None:
    assert version_newer("10", "9") and not version_newer("9", "10") and not version_newer("9", "9")
    assert version_newer("5", None) and not version_newer(None, "5")
    vmi = {"metadata": {"name": "n1", "managedFields": [{"manager": "x"}]}, "spec": {"big": 1},
           "status": {"phase": "Running"}}
    assert slim(VMIS_RESOURCE, vmi) == {"metadata": {"name": "n1"}, "status": {"phase": "Running"}}



async def test_the_request_budget_of_a_start_and_of_running_labs(emulator: LabEmulator, sync_api: KubeApi) -> None:
    """Issue 10's budget, with the benchmark's own start sequence (bench/kube_requests.py): a warm
    3-node start <= 12 requests, a cold one <= 25, and a health round of running labs none."""
    from bench.kube_requests import KEY, boot_when_created, fill, start_lab
    from cluster.kubevirt.api import AsyncKubeApi

    fill(emulator, 5)
    cluster = KubeVirtCluster(AsyncKubeApi(sync_api), ssh_public_key=KEY, cache=ClusterCache(sync_api))
    try:
        assert await cache_of(cluster).wait_synced(5)
        mark = len(emulator.requests_log)
        await start_lab(cluster, ref("warm"), None)
        warm = len(emulator.requests_since(mark))
        cold_nodes = ["cold-0", "cold-1", "cold-2"]
        booting = asyncio.create_task(boot_when_created(emulator, cold_nodes))
        mark = len(emulator.requests_log)
        await start_lab(cluster, ref("cold"), cold_nodes)
        await booting
        cold = len(emulator.requests_since(mark))
        mark = len(emulator.requests_log)
        for lab in range(5):
            for index in range(3):
                assert (await cluster.node_status(f"run-{lab}-{index}")).phase == NodePhase.READY
        await cluster.inventory()
        assert warm <= 12 and cold <= 25 and emulator.requests_since(mark) == []
    finally:
        await cluster.close()


async def test_after_an_outage_the_cache_is_trusted_again_once_its_watch_is_back(
    sync_api: KubeApi, emulator: LabEmulator, virt: VirtController, platform_key: tuple[Any, str], clock: Clock
) -> None:
    cache = ClusterCache(sync_api, stale_after=0.2)
    cached = make_cluster(sync_api, platform_key[1], clock, cache)
    try:
        await cached.provision(spec("n1"))
        assert await cache.wait_synced(5)
        emulator.inject("GET", r"/virtualmachineinstances$", 503, query="watch=true", times=1)
        emulator.end_watches()
        await eventually(lambda: cache.reflectors[VMIS_RESOURCE].stats.errors == 1)
        await eventually(lambda: cache.reflectors[VMIS_RESOURCE].broken_since is None)  # reconnected
        await asyncio.sleep(0.3)  # longer than stale_after: an open watch is not an outage
        virt.running("n1", "10.244.1.7")
        await caught_up(cache, emulator)
        mark = len(emulator.requests_log)
        assert (await cached.node_status("n1")).phase == NodePhase.READY
        assert emulator.requests_since(mark) == []
    finally:
        await cached.close()
