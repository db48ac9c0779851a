"""Replay a demand trace against a static warm pool and the demand-aware policy; print the figures.

    python -m bench.pool_sim --seed 7 --days 7

Model (10-second steps): every minute a refill tops each class up to its target (static: N; demand
-aware: workflows.pool_policy.target) and, for the demand-aware pool, deletes free nodes above the
target. A lab start takes one control-plane node and 0-2 workers; it is an *instant claim* when every
node it needs is free, otherwise it cold-provisions what is missing. A new node boots in a random time
(default 45-150 s). Idle VM-hours count free and provisioning pool nodes (what the pool costs).
The static pool is searched: the smallest N (control planes; workers scaled by the trace's ratio)
whose hit rate reaches the demand-aware pool's.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bench.demand_trace import LabStart, generate
from workflows import pool_policy
from workflows.pool_policy import ClassDemand, SizingParams

STEP = 10 / 60  # minutes
CLASSES = ("controlplane", "worker")
EPOCH = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday


@dataclass
class Figures:
    name: str
    sessions: int
    instant: int
    idle_vm_hours: float
    peak_pool: int

    @property
    def hit_rate(self) -> float:
        return self.instant / self.sessions if self.sessions else 1.0


def simulate(
    trace: list[LabStart],
    *,
    static: dict[str, int] | None,
    params: dict[str, SizingParams],
    boot_range: tuple[float, float],
    seed: int,
    days: int,
) -> Figures:
    rng = random.Random(seed)
    free = dict.fromkeys(CLASSES, 0)
    booting: dict[str, list[float]] = {c: [] for c in CLASSES}  # ready times (minutes)
    demand = {c: ClassDemand() for c in CLASSES}
    claims_since_refill = dict.fromkeys(CLASSES, 0)
    sessions = instant = 0
    idle_minutes = 0.0
    peak_pool = 0
    index = 0
    steps = int(days * 1440 / STEP)
    for step in range(steps):
        now = step * STEP
        for cls in CLASSES:
            ready = [t for t in booting[cls] if t <= now]
            if ready:
                booting[cls] = [t for t in booting[cls] if t > now]
                free[cls] += len(ready)
        if step % round(1 / STEP) == 0:  # the refill schedule: every minute
            moment = EPOCH + timedelta(minutes=now)
            for cls in CLASSES:
                if static is not None:
                    wanted = static[cls]
                else:
                    demand[cls] = pool_policy.observe(demand[cls], moment, claims_since_refill[cls], params[cls])
                    wanted = pool_policy.target(demand[cls], moment, params[cls])
                claims_since_refill[cls] = 0
                have = free[cls] + len(booting[cls])
                for _ in range(max(0, wanted - have)):
                    boot = rng.uniform(*boot_range)
                    booting[cls].append(now + boot / 60)
                    if static is None:
                        demand[cls] = pool_policy.observe_boot(demand[cls], boot)
                if have > wanted:
                    free[cls] -= min(free[cls], have - wanted)
        while index < len(trace) and trace[index].minute < now + STEP:
            start = trace[index]
            index += 1
            sessions += 1
            need = {"controlplane": 1, "worker": start.workers}
            hit = all(free[c] >= n for c, n in need.items())
            for cls, n in need.items():
                free[cls] -= min(free[cls], n)  # warm first, the rest cold-provisioned (not pool cost)
                claims_since_refill[cls] += n
            instant += hit
        pool = sum(free.values()) + sum(len(b) for b in booting.values())
        peak_pool = max(peak_pool, pool)
        idle_minutes += pool * STEP
    name = f"static N={static}" if static is not None else "demand-aware"
    return Figures(name, sessions, instant, idle_minutes / 60, peak_pool)


def static_sizes(n: int, worker_ratio: float) -> dict[str, int]:
    return {"controlplane": n, "worker": math.ceil(n * worker_ratio)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--boot-min", type=float, default=45, help="seconds")
    parser.add_argument("--boot-max", type=float, default=150, help="seconds")
    parser.add_argument("--max-size", type=int, default=60)
    parser.add_argument("--static", type=int, default=None,
                        help="also report a static pool of N control planes (workers scaled)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    trace = generate(args.seed, args.days)
    worker_ratio = sum(s.workers for s in trace) / len(trace)
    params = {c: SizingParams(min_size=1, max_size=args.max_size) for c in CLASSES}
    common = {"params": params, "boot_range": (args.boot_min, args.boot_max), "seed": args.seed, "days": args.days}

    policy = simulate(trace, static=None, **common)
    # Smallest static pool reaching the same hit rate (hit rate grows with N: binary search).
    low, high = 0, 4 * args.max_size
    found: Figures | None = None
    while low < high:
        mid = (low + high) // 2
        figures = simulate(trace, static=static_sizes(mid, worker_ratio), **common)
        if figures.hit_rate >= policy.hit_rate:
            high, found = mid, figures
        else:
            low = mid + 1
    static = found or simulate(trace, static=static_sizes(low, worker_ratio), **common)
    ratio = policy.idle_vm_hours / static.idle_vm_hours if static.idle_vm_hours else math.inf

    result = {
        "trace": {"seed": args.seed, "days": args.days, "lab_starts": len(trace)},
        "demand_aware": {"hit_rate": policy.hit_rate, "idle_vm_hours": policy.idle_vm_hours,
                         "peak_pool": policy.peak_pool},
        "smallest_static": {"sizes": static_sizes(low, worker_ratio), "hit_rate": static.hit_rate,
                            "idle_vm_hours": static.idle_vm_hours, "peak_pool": static.peak_pool},
        "idle_ratio": ratio,
        "goal_met": policy.hit_rate >= 0.97 and ratio <= 0.5,
    }
    chosen = None
    if args.static is not None:
        chosen = simulate(trace, static=static_sizes(args.static, worker_ratio), **common)
        result["static_n"] = {"sizes": static_sizes(args.static, worker_ratio), "hit_rate": chosen.hit_rate,
                              "idle_vm_hours": chosen.idle_vm_hours, "peak_pool": chosen.peak_pool}
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    print(f"trace: seed {args.seed}, {args.days} days, {len(trace)} lab starts")
    print(f"{'pool':<34}{'instant claims':>16}{'idle VM-hours':>16}{'peak pool':>11}")
    rows = [(policy, "demand-aware"), (static, f"smallest static {static_sizes(low, worker_ratio)}")]
    if chosen is not None and args.static is not None:
        rows.append((chosen, f"static {static_sizes(args.static, worker_ratio)}"))
    for fig, label in rows:
        print(f"{label:<34}{fig.hit_rate:>15.2%}{fig.idle_vm_hours:>16.1f}{fig.peak_pool:>11}")
    print(f"idle VM-hours demand-aware / static: {ratio:.0%} (goal <= 50% at >= 97% instant) "
          f"{'MET' if result['goal_met'] else 'NOT MET'}")


if __name__ == "__main__":
    main()
