"""Figures for the simulated cluster at zero latency (prints, asserts nothing).

    python -m bench.simulated_cluster [--sessions 50] [--labs 5000] [--ssh [--ssh-idle 2]]

1. N concurrent 3-node sessions through the port: claim (warm) or cold provision, status, wire,
   expose, ssh_target per node (with --ssh), release. p50/p99 per session.
2. A cluster holding L running labs (3 nodes each, wired, exposed): time to build, inventory time,
   RSS, open file descriptors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from cluster.models import ClaimRequest, ClaimWant, NodeSpec, SessionRef, SessionWiring
from cluster.simulated import SimulatedCluster
from labs.models import ContainerDiskSource, Role


def spec(node_id: str, role: Role, session: SessionRef | None = None) -> NodeSpec:
    return NodeSpec(
        node_id=node_id,
        node_class="cp" if role == Role.CONTROLPLANE else "worker",
        role=role,
        image="127.0.0.1:5000/labrador/node:v1",
        kubernetes_version="1.31.2",
        cpu_cores=1,
        memory="1536Mi",
        disk=ContainerDiskSource(),
        session=session,
    )


async def one_session(sim: SimulatedCluster, i: int, ssh: bool) -> float:
    start = time.perf_counter()
    ref = SessionRef(session_id=f"s{i}", workflow_id=f"wf-{i}", run_id=f"run-{i}")
    result = await sim.claim(
        ClaimRequest(session=ref, wants=[ClaimWant(node_class="cp", count=1), ClaimWant(node_class="worker", count=2)])
    )
    have = {n.role for n in result.nodes}
    nodes = [n.node_id for n in result.nodes]
    if Role.CONTROLPLANE not in have:
        nodes.append((await sim.provision(spec(f"s{i}-cp", Role.CONTROLPLANE, ref))).node_id)
    while len(nodes) < 3:
        nodes.append((await sim.provision(spec(f"s{i}-w{len(nodes)}", Role.WORKER, ref))).node_id)
    await asyncio.gather(*(sim.node_status(n) for n in nodes))
    await sim.wire(SessionWiring(session=ref, controlplane=nodes[0], workers=nodes[1:]))
    if ssh:
        await asyncio.gather(*(sim.ssh_target(n) for n in nodes))
    await sim.expose(ref.session_id, nodes[0])
    await sim.release(ref.session_id)
    return time.perf_counter() - start


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--labs", type=int, default=5000)
    parser.add_argument("--ssh", action="store_true", help="also start each node's SSH listener")
    parser.add_argument("--ssh-idle", type=float, default=None, help="close node listeners idle this long")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sim = SimulatedCluster(Path(tmp) / "a.sqlite")
        for i in range(args.sessions):  # half the sessions find a warm pool
            if i % 2 == 0:
                for n, role in enumerate((Role.CONTROLPLANE, Role.WORKER, Role.WORKER)):
                    await sim.provision(spec(f"pool-{i}-{n}", role))
                    await sim.mark_free(f"pool-{i}-{n}")
        for concurrency in (1, 10, args.sessions):
            times = sorted(
                await asyncio.gather(*(one_session(sim, 1000 * concurrency + i, args.ssh) for i in range(concurrency)))
            )
            p50, p99 = statistics.median(times) * 1000, times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
            print(f"{concurrency:3d} concurrent sessions: p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")
        await sim.aclose()

        sim = SimulatedCluster(Path(tmp) / "b.sqlite", ssh_idle_seconds=args.ssh_idle)
        base = rss_mib()
        start = time.perf_counter()
        sem = asyncio.Semaphore(200)

        async def lab(i: int) -> None:
            async with sem:
                ref = SessionRef(session_id=f"lab{i}", workflow_id=f"wf-{i}", run_id=f"run-{i}")
                ids = [f"lab{i}-cp", f"lab{i}-w1", f"lab{i}-w2"]
                for node_id, role in zip(ids, (Role.CONTROLPLANE, Role.WORKER, Role.WORKER), strict=True):
                    await sim.provision(spec(node_id, role, ref))
                await sim.wire(SessionWiring(session=ref, controlplane=ids[0], workers=ids[1:]))
                await sim.expose(ref.session_id, ids[0])
                if args.ssh:
                    for node_id in ids:
                        await sim.ssh_target(node_id)

        await asyncio.gather(*(lab(i) for i in range(args.labs)))
        built = time.perf_counter() - start
        start = time.perf_counter()
        inventory = await sim.inventory()
        took = time.perf_counter() - start
        fds = len(os.listdir("/proc/self/fd"))
        print(
            f"{args.labs} running labs ({len(inventory.nodes)} nodes, {inventory.exposed_ports_in_use} exposed):"
            f" built in {built:.1f} s, inventory {took*1000:.0f} ms,"
            f" max RSS {rss_mib():.0f} MiB (+{rss_mib() - base:.0f}), open fds {fds}"
        )
        await sim.aclose()


if __name__ == "__main__":
    asyncio.run(main())
