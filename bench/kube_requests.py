"""Requests the kubevirt backend sends to the Kubernetes API (prints figures, asserts nothing).

    python -m bench.kube_requests [--labs 1000] [--health-interval 30]
    python -m bench.kube_requests --labs 50        # the small, fast size (CI smoke: a few seconds)

Everything runs in one process against the Kubernetes API emulator of the tests
(tests/kubevirt/emulator.py: kmock completed with paged lists, watch streams and a request log),
counted on the server side. The cluster is filled directly in the emulator with the backend's own
manifests: N running labs of 3 nodes (namespace, VM, Ready VMI, default-deny and session
policies, the SSH Service and its policy), plus a warm pool of 3 free nodes. Then, with the
backend as the worker builds it (one list+watch cache per process):

- worker start: the cache's first list of the five watched resources (paged, 500 a page) and
  its five watch requests;
- a warm 3-node start: the port calls of a lab session in order (inventory for the capacity
  decision, claim, one status per node, wire, one SSH target per node for the setup scripts,
  expose), counting the requests they send (watch streams excluded: they are long-lived);
- a cold 3-node start: the same with nothing free, so claim finds nothing and the three nodes are
  provisioned, then waited for with the real `wait_node_ready` activity while a stand-in for
  virt-controller makes them ready;
- steady state: one health round (a status of every node of every lab, as each session does every
  `health_interval`) and one inventory (pool refill, capacity broker), in requests per second at that
  interval, plus the watch renewals (five per WATCH_TIMEOUT seconds). For comparison, the same round
  without a cache (what the backend does while its cache is not listed or its watch is down) on a
  sample of nodes, scaled to all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import kmock
from kubernetes import client
from temporalio.testing import ActivityEnvironment

from activities.cluster_activities import ClusterActivities
from cluster.kubevirt import manifests as M
from cluster.kubevirt.api import AsyncKubeApi, KubeApi
from cluster.kubevirt.backend import KubeVirtCluster
from cluster.kubevirt.cache import WATCH_TIMEOUT, ClusterCache
from cluster.models import ClaimRequest, ClaimWant, NodeSpec, NodeState, SessionRef, SessionWiring
from labs.models import ContainerDiskSource, Role
from tests.kubevirt.emulator import NAMESPACES, POLICIES, SERVICES, VMS, LabEmulator, VirtController
from workflows.models import WaitReadyInput

IMAGE = "registry.example.test/labrador/node@sha256:" + "e" * 64
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkKeyOnly bench"
ROLES = (("cp", Role.CONTROLPLANE), ("worker", Role.WORKER), ("worker", Role.WORKER))


def node_spec(node_id: str, node_class: str, role: Role, session: SessionRef | None = None) -> NodeSpec:
    return NodeSpec(node_id=node_id, node_class=node_class, role=role, image=IMAGE, kubernetes_version="1.31.2",
                    cpu_cores=1, memory="1536Mi", disk=ContainerDiskSource(), session=session)


def ref(session_id: str) -> SessionRef:
    return SessionRef(session_id=session_id, workflow_id=f"lab-session/{session_id}", run_id=f"run-{session_id}")


def put_node(emulator: LabEmulator, virt: VirtController, spec: NodeSpec, state: NodeState, ip: str) -> None:
    """A running node as the backend and KubeVirt leave it, written straight into the emulator."""
    names = M.node_names(spec.node_id)
    ns = M.namespace(spec, datetime.now(UTC))
    labels = ns["metadata"]["labels"]
    labels["kubernetes.io/metadata.name"] = names.namespace
    labels.update(M.state_patch(state, spec.session)["metadata"]["labels"])
    if spec.session is not None:
        ns["metadata"].setdefault("annotations", {}).update(
            M.claim_patch("0", spec.session)["metadata"].get("annotations") or {})
    emulator.put(NAMESPACES, None, names.namespace, {**ns, "status": {"phase": "Active"}})
    emulator.put(POLICIES, names.namespace, "default-deny", M.default_deny_policy(spec.node_id))
    emulator.put(VMS, names.namespace, names.vm, M.virtual_machine(spec))
    virt.running(spec.node_id, ip)


def fill(emulator: LabEmulator, labs: int) -> None:
    virt = VirtController(emulator)
    for lab in range(labs):
        session = ref(f"lab-{lab}")
        node_ids = []
        for index, (node_class, role) in enumerate(ROLES):
            node_id = f"run-{lab}-{index}"
            node_ids.append(node_id)
            put_node(emulator, virt, node_spec(node_id, node_class, role, session), NodeState.CLAIMED,
                     f"10.{lab // 250 % 250}.{lab % 250}.{index + 1}")
        for node_id in node_ids:
            policy = M.session_policy(node_id, session.session_id, "labrador")
            emulator.put(POLICIES, policy["metadata"]["namespace"], policy["metadata"]["name"], policy)
        service = M.ssh_service(node_ids[0], session.session_id)
        service["spec"]["ports"][0]["nodePort"] = 30000 + lab % 2768
        emulator.put(SERVICES, service["metadata"]["namespace"], service["metadata"]["name"], service)
        ingress = M.ssh_ingress_policy(node_ids[0], session.session_id)
        emulator.put(POLICIES, ingress["metadata"]["namespace"], ingress["metadata"]["name"], ingress)
    for index, (node_class, role) in enumerate(ROLES):
        put_node(emulator, virt, node_spec(f"pool-{index}", node_class, role), NodeState.FREE, f"10.250.0.{index}")


def deep_size(obj: object) -> int:
    """Bytes held by nested dicts/lists/strings (shared objects counted once)."""
    seen: set[int] = set()
    stack = [obj]
    total = 0
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total


def counted(emulator: LabEmulator, mark: int) -> int:
    return len(emulator.requests_since(mark))


def breakdown(emulator: LabEmulator, mark: int) -> str:
    kinds = Counter(f"{method} {path.rsplit('/', 2)[-2] if method != 'POST' else path.rsplit('/', 1)[-1]}"
                    for method, path, _ in emulator.requests_since(mark))
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))


async def start_lab(cluster: KubeVirtCluster, session: SessionRef, node_ids: list[str] | None) -> list[str]:
    """The port calls of one lab start, in the session workflow's order. `node_ids` None: warm
    (claim them); else cold (claim finds nothing, provision these)."""
    wants = [ClaimWant(node_class="cp", count=1), ClaimWant(node_class="worker", count=2)]
    await cluster.inventory()  # the capacity decision
    claimed = [n.node_id for n in (await cluster.claim(ClaimRequest(session=session, wants=wants))).nodes]
    if node_ids is None:
        node_ids = claimed
    else:
        for node_id, (node_class, role) in zip(node_ids, ROLES, strict=True):
            await cluster.provision(node_spec(node_id, node_class, role, session))
    statuses = [await cluster.node_status(node_id) for node_id in node_ids]
    waits = ClusterActivities(cluster)
    for node_id, status in zip(node_ids, statuses, strict=True):
        if status.phase != "ready":
            await ActivityEnvironment().run(waits.wait_node_ready, WaitReadyInput(node_id=node_id))
    await cluster.wire(SessionWiring(session=session, controlplane=node_ids[0], workers=node_ids[1:]))
    for node_id in node_ids:
        await cluster.ssh_target(node_id)
    await cluster.expose(session.session_id, node_ids[0])
    return node_ids


async def boot_when_created(emulator: LabEmulator, node_ids: list[str]) -> None:
    """virt-controller and virt-handler, quickly: each VM created becomes a Ready VMI 50 ms later."""
    virt = VirtController(emulator)
    pending = list(node_ids)
    while pending:
        for node_id in list(pending):
            names = M.node_names(node_id)
            if emulator.live(VMS, names.namespace, names.vm) is not None:
                await asyncio.sleep(0.05)
                virt.running(node_id, f"10.251.0.{len(pending)}")
                pending.remove(node_id)
        await asyncio.sleep(0.01)


async def run(labs: int, health_interval: float) -> None:
    async with LabEmulator() as emulator, kmock.Server(emulator):
        began = time.monotonic()
        fill(emulator, labs)
        print(f"cluster: {labs} running labs of 3 nodes + 3 free nodes "
              f"({len(emulator.live_keys())} objects, filled in {time.monotonic() - began:.1f} s)")
        configuration = client.Configuration()
        configuration.host = str(emulator.url).rstrip("/")
        sync_api = KubeApi(client.ApiClient(configuration))
        cache = ClusterCache(sync_api)
        cluster = KubeVirtCluster(AsyncKubeApi(sync_api), ssh_public_key=KEY, external_host="labs.example.test",
                                  cache=cache)
        try:
            mark = len(emulator.requests_log)
            began = time.monotonic()
            assert await cache.wait_synced(120)
            await asyncio.sleep(0.3)  # the five watches open right after their lists
            pages = counted(emulator, mark)
            watches = len(emulator.requests_log) - mark - pages
            print(f"worker start (cache listed): {pages} list requests (pages of 500) + {watches} watches, "
                  f"{time.monotonic() - began:.2f} s; cache {sum(len(r.store) for r in cache.reflectors.values())} "
                  f"objects, ~{deep_size([r.store for r in cache.reflectors.values()]) / 2**20:.0f} MiB")

            mark = len(emulator.requests_log)
            await start_lab(cluster, ref("warm-1"), None)
            print(f"warm 3-node start: {counted(emulator, mark)} requests ({breakdown(emulator, mark)})")

            cold = [f"cold-{i}" for i in range(3)]
            booting = asyncio.create_task(boot_when_created(emulator, cold))
            mark = len(emulator.requests_log)
            began = time.monotonic()
            await start_lab(cluster, ref("cold-1"), cold)
            await booting
            print(f"cold 3-node start: {counted(emulator, mark)} requests ({breakdown(emulator, mark)}), "
                  f"ready wait woken by the watch ({time.monotonic() - began:.2f} s)")

            running = [f"run-{lab}-{i}" for lab in range(labs) for i in range(3)]
            mark = len(emulator.requests_log)
            began = time.monotonic()
            for node_id in running:
                await cluster.node_status(node_id)
            await cluster.inventory()
            per_round = counted(emulator, mark)
            took = time.monotonic() - began
            renewals = len(cache.reflectors) / WATCH_TIMEOUT
            rate = per_round / health_interval + renewals
            print(f"steady state, {labs} labs: {per_round} requests per health round of {len(running)} statuses "
                  f"+ 1 inventory ({took:.2f} s in the worker) + watch renewals {renewals:.3f}/s "
                  f"= {rate:.3f} requests/s at a {health_interval:g} s health interval")

            direct = KubeVirtCluster(AsyncKubeApi(sync_api), ssh_public_key=KEY)
            sample = running[:30]  # enough for the per-status figure (the emulator is slow per GET)
            mark = len(emulator.requests_log)
            for node_id in sample:
                await direct.node_status(node_id)
            per_status = counted(emulator, mark) / len(sample)
            mark = len(emulator.requests_log)
            await direct.inventory()
            inventory_pages = counted(emulator, mark)
            old_rate = (per_status * len(running) + inventory_pages) / health_interval
            print(f"  without the cache: {per_status:.0f} requests per status, {inventory_pages} list pages per "
                  f"inventory = {old_rate:.0f} requests/s")
        finally:
            await cluster.close()
            emulator.end_watches()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--labs", type=int, default=1000, help="running labs of 3 nodes (default 1000)")
    parser.add_argument("--health-interval", type=float, default=30.0,
                        help="seconds between a session's health checks (the session timing's default)")
    args = parser.parse_args(argv)
    asyncio.run(run(args.labs, args.health_interval))


if __name__ == "__main__":
    main()
