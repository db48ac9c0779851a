"""Session orchestration overhead, start -> ready, against the engine's own floor (prints, asserts nothing).

    python -m bench.session_overhead [--rounds 20] [--concurrency 1 10 50] [--ssh]
    python -m bench.session_overhead --hold 5000
    python -m bench.session_overhead --burst 300

Overhead mode: an in-memory dev server, the production worker's tuning and interceptors
(`worker.WORKER_TUNING`), the simulated cluster at zero boot latency and a 3-node lab
(`networkpolicy-db`). Measures, per start, client `start` until the `wait_ready` update answers with
credentials, for warm (claimed from a pre-filled pool) and cold (provisioned) nodes, at 1, 10 and 50
concurrent starts; a round's labs are ended once all of its starts answered (their teardowns are not
timed and do not overlap the starts). In the same run: a bare workflow running 8 sequential no-op
regular activities (the engine's floor for the same number of steps), and the same with local
activities. The script activities are no-op stand-ins unless --ssh (then the real ones run over SSH
against the simulated nodes' sshd).
Payloads are encrypted as in a deployment (labrador.temporal.data_converter, a key made for the run).

Burst mode: N starts at the same moment (a class pressing "start") against a warm pool holding free
nodes for all N labs; prints p50/p99 start -> ready and whether all became ready.

Hold mode: one worker holding N running labs (credentials fetched, waiting for expiry); prints the
process RSS (worker + simulated cluster + client in one process) and the time to get there.

Burst and hold first print the engine floor for a lab start's shape, measured the same way in the same
run: N `BareLab` workflows (update-with-start answered after one regular activity). Both set their own
capacity cap, as an operator would for the load to come. Both also print the CPU time one start costs
this process (worker, simulated cluster and client) and the dev server, for the floor and for the labs:
on a machine of C cores, N starts cannot take less than N x (both figures) / C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from temporalio import activity, workflow
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from cluster.models import NodeSpec, SessionRef
from cluster.published_images import JsonFilePublishedImages
from labrador.binaries import temporal_cli
from labrador.client import LabClient
from labrador.codec import new_key_entry
from labrador.settings import PACKAGE_LABS_DIR, Settings
from labrador.temporal import data_converter
from labs.loader import load_catalog
from labs.models import Catalog
from worker import WORKER_TUNING, build_port
from workflows import search_attributes
from workflows.models import (
    ActivityName,
    CheckReport,
    ChecksInput,
    SessionCredentials,
    SessionTimings,
    SetupInput,
    SetupResult,
    TeardownInput,
)

LAB = "networkpolicy-db"
HOLD_LAB = "sandbox"
# The dev server's own defaults, like `labrador dev` (no extra server options).
DEV_SERVER_ARGS: list[str] = []
STEPS = 8
# Payloads encrypted as in a deployment (labrador.temporal.data_converter): a key made for this run
# only, never written anywhere. Measured against no codec at all: the same CPU per start.
CODEC_KEYS = SecretStr(new_key_entry("bench"))
FLOOR_SAMPLE = 1000  # hold mode: the floor's rate from this many (completed runs pile up in the dev server)


# --- the engine's floor -----------------------------------------------------------------------------


@activity.defn(name="bench_noop")
async def noop(step: int) -> int:
    return step


@workflow.defn(name="BareSteps", sandboxed=False)
class BareSteps:
    @workflow.run
    async def run(self, local: bool) -> int:
        for step in range(STEPS):
            if local:
                await workflow.execute_local_activity(
                    "bench_noop", step, start_to_close_timeout=timedelta(seconds=10),
                    retry_policy=RetryPolicy(maximum_attempts=3),
                )
            else:
                await workflow.execute_activity(
                    "bench_noop", step, start_to_close_timeout=timedelta(seconds=10),
                    retry_policy=RetryPolicy(maximum_attempts=3),
                )
        return STEPS


@workflow.defn(name="BareLab", sandboxed=False)
class BareLab:
    """The engine's floor for the shape of a lab start: started by update-with-start, one regular activity
    (the setup), the update answered, then held by a timer (what a running lab waits on)."""

    def __init__(self) -> None:
        self.ready = False

    @workflow.run
    async def run(self, hold_seconds: float) -> int:
        await workflow.execute_activity("bench_noop", 0, start_to_close_timeout=timedelta(seconds=30),
                                        retry_policy=RetryPolicy(maximum_attempts=3))
        self.ready = True
        await workflow.sleep(hold_seconds)
        return 1

    @workflow.update
    async def wait_ready(self) -> bool:
        await workflow.wait_condition(lambda: self.ready)
        return True


# --- no-op script activities (zero-latency infrastructure) ------------------------------------------


@activity.defn(name=ActivityName.CREATE_SESSION_CREDENTIALS)
async def credentials(session: SessionRef) -> SessionCredentials:
    return SessionCredentials(private_key="bench-private-key", public_key="ssh-ed25519 AAAA bench")


def setup_stand_in(port: Any) -> Any:
    """No setup scripts; the platform's last step (expose SSH when asked, as `run_setup` does) stays."""

    @activity.defn(name=ActivityName.RUN_SETUP)
    async def setup(request: SetupInput) -> SetupResult:
        if request.expose is None:
            return SetupResult()
        return SetupResult(endpoint=await port.expose(request.expose.session_id, request.expose.node_id))

    return setup


@activity.defn(name=ActivityName.RUN_CHECKS)
async def checks(request: ChecksInput) -> CheckReport:
    return CheckReport()


@activity.defn(name=ActivityName.RUN_TEARDOWN_SCRIPTS)
async def teardown(request: TeardownInput) -> SetupResult:
    return SetupResult()


STUB_SCRIPTS = [credentials, checks, teardown]  # and setup_stand_in(port)


# --- helpers ----------------------------------------------------------------------------------------


def activity_name(function: Any) -> str:
    return str(getattr(function, "__temporal_activity_definition").name)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return p50 * 1000, p99 * 1000


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CpuMeter:
    """CPU seconds (user + system) of this process (worker, simulated cluster and client) and of the
    dev server it started, read from /proc: what one start costs each side, measured, not guessed."""

    def __init__(self) -> None:
        self.server = _dev_server_pid()
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._mark = self._read()

    def _read(self) -> tuple[float, float]:
        times = os.times()
        server = 0.0
        if self.server is not None:
            try:
                fields = _proc_stat(self.server)
                server = (int(fields[11]) + int(fields[12])) / self._ticks  # utime, stime
            except (OSError, IndexError, ValueError):
                server = float("nan")
        return times.user + times.system, server

    def skip(self) -> None:
        """Leave what was spent since the last reading out of the next one."""
        self._mark = self._read()

    def per_start(self, starts: int) -> str:
        """CPU milliseconds per start since the last call, as a printable fragment."""
        now = self._read()
        ours, server = ((b - a) * 1000 / max(starts, 1) for a, b in zip(self._mark, now, strict=True))
        self._mark = now
        return f"CPU per start: worker process {ours:.1f} ms, Temporal server {server:.1f} ms"


def _proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces): state is [0]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _dev_server_pid() -> int | None:
    """The dev server is this process's child running `temporal server start-dev`."""
    me = str(os.getpid())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = _proc_stat(int(proc.name))[1]
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if ppid == me and b"start-dev" in command:
            return int(proc.name)
    return None


async def fill_pool(port: Any, catalog: Catalog, count: int) -> None:
    lab = catalog.labs[LAB]
    for index in range(count):
        for node in lab.nodes:
            cls = catalog.node_classes[node.node_class]
            node_id = f"warm-{node.name}-{index}-{uuid.uuid4().hex[:6]}"
            await port.provision(NodeSpec(
                node_id=node_id, node_class=cls.name, role=cls.role, image=cls.image,
                kubernetes_version=cls.kubernetes_version, cpu_cores=cls.cpu_cores, memory=cls.effective_memory,
                disk=cls.disk,
            ))
            await port.mark_free(node_id)


class Bench:
    def __init__(
        self, client: Client, data_dir: Path, ssh: bool, timings: SessionTimings, max_vms: int | None = None
    ) -> None:
        self.client = client
        self._started: list[str] = []
        self.catalog = load_catalog(PACKAGE_LABS_DIR)
        # The global cap, set as an operator would for the load to come (settings max_vms / max_memory).
        cap: dict[str, Any] = {} if max_vms is None else {"max_vms": max_vms, "max_memory": f"{max_vms * 2}Gi"}
        self.settings = Settings(task_queue=f"bench-{uuid.uuid4().hex[:6]}", data_dir=data_dir,
                                 cluster_backend="simulated", sim_boot_seconds=0.0, codec_keys=CODEC_KEYS, **cap)
        self.port = build_port(self.settings)
        self.labs = LabClient(client, self.settings, catalog=self.catalog,
                              published=JsonFilePublishedImages.in_data_dir(data_dir), timings=timings)
        from worker import activity_functions, workflow_classes

        activities = activity_functions(self.port, self.settings)
        if not ssh:
            stand_ins = [*STUB_SCRIPTS, setup_stand_in(self.port)]
            names = {activity_name(a) for a in stand_ins}
            activities = [a for a in activities if activity_name(a) not in names]
            activities += stand_ins
        from workflows.metrics import MetricsInterceptor

        # worker.build_worker's wiring, with the stand-in script activities and the floor's workflows
        self.worker = Worker(client, task_queue=self.settings.task_queue,
                             workflows=[*workflow_classes(), BareSteps, BareLab],
                             activities=[*activities, noop], interceptors=[MetricsInterceptor()], **WORKER_TUNING)

    async def session(self) -> float:
        """One start until ready; the lab is ended after its round (`end_started`), untimed."""
        student = f"b-{uuid.uuid4().hex[:10]}"
        began = time.perf_counter()
        started = await self.labs.start(student, LAB, wait=timedelta(seconds=60))
        elapsed = time.perf_counter() - began
        assert started.ready is not None and started.ready.ready, started
        self._started.append(student)
        return elapsed

    async def end_started(self) -> None:
        """End the round's labs once all of its starts answered: their teardowns (grading, unexpose,
        unwire, release) do not load the starts still running, which the bare workflows do not have."""
        students, self._started = self._started, []

        async def end(student: str) -> None:
            await self.labs.end(student)
            await self.labs.result(student)

        await asyncio.gather(*(end(s) for s in students))

    async def bare(self, local: bool) -> float:
        began = time.perf_counter()
        await self.client.execute_workflow(BareSteps.run, local, id=f"bare-{uuid.uuid4().hex}",
                                           task_queue=self.settings.task_queue)
        return time.perf_counter() - began

    async def bare_lab(self, hold: timedelta) -> float:
        """One floor start (BareLab): seconds until its update answered."""
        began = time.perf_counter()
        operation = WithStartWorkflowOperation(
            BareLab.run, hold.total_seconds(), id=f"bare-lab-{uuid.uuid4().hex}", task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
        await self.client.execute_update_with_start_workflow(BareLab.wait_ready, start_workflow_operation=operation)
        return time.perf_counter() - began

    async def measure(
        self, name: str, factory: Any, concurrency: int, samples: int, after_round: Any = None
    ) -> None:
        results: list[float] = []
        while len(results) < samples:
            results += await asyncio.gather(*(factory() for _ in range(concurrency)))
            if after_round is not None:
                await after_round()
        p50, p99 = percentiles(results)
        print(f"{name:<34} x{concurrency:<3} n={len(results):<4} p50 {p50:8.1f} ms   p99 {p99:8.1f} ms", flush=True)


async def dev_server() -> WorkflowEnvironment:
    """The Temporal dev server every benchmark here runs against (labrador's search attributes)."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli()), data_converter=data_converter(Settings(codec_keys=CODEC_KEYS)),
        search_attributes=list(search_attributes.ALL), dev_server_log_level="error",
        dev_server_extra_args=DEV_SERVER_ARGS,
    )


async def run_overhead(args: argparse.Namespace) -> None:
    env = await dev_server()
    bench = Bench(env.client, Path(tempfile.mkdtemp(prefix="bench-")), args.ssh,
                  SessionTimings(health_interval=timedelta(minutes=1)))
    try:
        async with bench.worker:
            print(f"3-node lab {LAB}, zero-latency simulated cluster, scripts: {'ssh' if args.ssh else 'no-op'}")
            for concurrency in args.concurrency:
                samples = max(args.rounds, concurrency * 2)
                await fill_pool(bench.port, bench.catalog, samples)
                await bench.measure("session start->ready (warm)", bench.session, concurrency, samples,
                                    bench.end_started)
                await bench.measure("session start->ready (cold)", bench.session, concurrency, samples,
                                    bench.end_started)
                await bench.measure(f"bare workflow, {STEPS} activities", lambda: bench.bare(False), concurrency,
                                    samples)
                await bench.measure(f"bare workflow, {STEPS} local activities", lambda: bench.bare(True),
                                    concurrency, samples)
    finally:
        await bench.port.aclose()
        await env.shutdown()


async def run_burst(args: argparse.Namespace) -> None:
    """N starts at the same moment against a warm pool holding free nodes for all N labs."""
    env = await dev_server()
    nodes = len(load_catalog(PACKAGE_LABS_DIR).labs[LAB].nodes)
    bench = Bench(env.client, Path(tempfile.mkdtemp(prefix="bench-")), False,
                  SessionTimings(health_interval=timedelta(hours=1), unclaimed_timeout=timedelta(hours=2)),
                  max_vms=2 * nodes * args.burst)
    try:
        await fill_pool(bench.port, bench.catalog, args.burst)
        async with bench.worker:
            cpu = CpuMeter()
            floor = await asyncio.gather(*(bench.bare_lab(timedelta(0)) for _ in range(args.burst)))
            p50, p99 = percentiles(floor)
            print(f"  engine floor, {args.burst} bare lab-shaped workflows at once (update-with-start answered "
                  f"after one activity): p50 {p50:.0f} ms p99 {p99:.0f} ms; {cpu.per_start(args.burst)}", flush=True)
            await asyncio.sleep(3)  # the floor's runs complete (not the labs' cost, nor the floor's answer)
            cpu.skip()
            students = [f"burst-{i}-{uuid.uuid4().hex[:6]}" for i in range(args.burst)]
            go = asyncio.Event()

            async def start(student: str) -> tuple[float, bool]:
                await go.wait()
                began = time.perf_counter()
                try:
                    started = await bench.labs.start(student, LAB, wait=timedelta(seconds=120))
                except Exception as error:
                    print(f"  {student}: {error}", flush=True)
                    return time.perf_counter() - began, False
                ready = started.ready is not None and started.ready.ready
                return time.perf_counter() - began, ready

            tasks = [asyncio.create_task(start(s)) for s in students]
            await asyncio.sleep(0.1)
            go.set()
            results = await asyncio.gather(*tasks)
            spent = cpu.per_start(args.burst)
            p50, p99 = percentiles([seconds for seconds, _ in results])
            warm = sum(1 for n in (await bench.port.inventory()).nodes if n.session is not None)
            print(f"  {warm} warm nodes claimed for {args.burst} labs of {nodes} nodes; {spent}", flush=True)
            print(f"burst of {args.burst} starts: p50 {p50:.0f} ms p99 {p99:.0f} ms, "
                  f"all ready: {'yes' if all(ok for _, ok in results) else 'no'}")
    finally:
        await bench.port.aclose()
        await env.shutdown()


async def run_hold(args: argparse.Namespace) -> None:
    env = await dev_server()
    # Health checks every --hold-health (default 1 h): at 30 s, 5,000 labs x 3 nodes would be 500 checks a
    # second, and with 1,000 cached workflows every check of an evicted lab is a replay (see docs/session.md).
    # The cap an operator sets for this many labs: room for all of their nodes, and some.
    nodes = len(load_catalog(PACKAGE_LABS_DIR).labs[HOLD_LAB].nodes)
    bench = Bench(env.client, Path(tempfile.mkdtemp(prefix="bench-")), False,
                  SessionTimings(health_interval=args.hold_health, unclaimed_timeout=timedelta(hours=2)),
                  max_vms=2 * nodes * args.hold)
    try:
        async with bench.worker:
            semaphore = asyncio.Semaphore(args.hold_concurrency)

            async def bare() -> None:
                async with semaphore:
                    await bench.bare_lab(timedelta(0))

            cpu = CpuMeter()
            began = time.perf_counter()
            floor = min(args.hold, FLOOR_SAMPLE)
            await asyncio.gather(*(bare() for _ in range(floor)))
            seconds = time.perf_counter() - began
            print(f"  engine floor: {floor} bare lab-shaped workflows (update-with-start answered after one "
                  f"activity), {args.hold_concurrency} in flight, in {seconds:.0f} s ({floor / seconds:.0f}/s); "
                  f"{cpu.per_start(floor)}", flush=True)
            await asyncio.sleep(2)  # the floor's runs complete and leave the cache
            cpu.skip()  # the floor's completions while settling: neither the floor's answers nor the labs
            before = rss_mib()
            began = time.perf_counter()
            students = [f"h-{i}-{uuid.uuid4().hex[:6]}" for i in range(args.hold)]

            done = 0

            async def hold(student: str) -> None:
                nonlocal done
                async with semaphore:
                    started = await bench.labs.start(student, HOLD_LAB, wait=timedelta(seconds=120))
                    assert started.ready is not None and started.ready.ready, started
                done += 1
                if done % 250 == 0:
                    print(f"  {done} labs running, RSS {rss_mib():.0f} MiB, {time.perf_counter() - began:.0f} s",
                          flush=True)

            await asyncio.gather(*(hold(s) for s in students))
            reached = time.perf_counter() - began
            print(f"  {args.hold} labs: {cpu.per_start(args.hold)}", flush=True)
            await asyncio.sleep(5)  # settle: timers set, nothing in flight
            print(f"worker holding {args.hold} running labs: RSS {rss_mib():.0f} MiB (before: {before:.0f} MiB), "
                  f"reached in {reached:.0f} s")
    finally:
        await bench.port.aclose()
        await env.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="samples per measurement (at least 2x concurrency)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--ssh", action="store_true", help="real SSH script activities instead of no-ops")
    parser.add_argument("--hold-health", type=lambda v: timedelta(seconds=float(v)), default=timedelta(hours=1),
                        help="hold mode: node-health interval in seconds")
    parser.add_argument("--hold", type=int, default=0, help="hold mode: RSS of one worker with N running labs")
    parser.add_argument("--hold-concurrency", type=int, default=100, help="hold mode: starts in flight at once")
    parser.add_argument("--burst", type=int, default=0, help="burst mode: N starts at once against a warm pool")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # a killed bench still stops its dev server (finally blocks)
    asyncio.run(run_hold(args) if args.hold else run_burst(args) if args.burst else run_overhead(args))
    # Leave without interpreter finalization: sdk-core's threads can still call into Python while it
    # tears down ("PyGILState_Release: thread state ... must be current", SIGABRT), seen at the exit of
    # a finished run. Everything is printed and the dev server is stopped by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
