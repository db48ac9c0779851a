"""A seedable synthetic demand trace: 7 days of lab starts with a diurnal rhythm and bursts.

- Background: a smooth daily curve (quiet nights, a long afternoon/evening peak), weekends lighter.
- Scheduled classes: on weekdays a class of 20-30 students starts at 10:00 and another at 15:00,
  within ~5 minutes (recurring: a demand-aware pool can learn them from yesterday).
- Random bursts: one or two a day at random times, 4-10 starts within ~5 minutes (not predictable).
Each start asks for one control-plane node and 0-2 workers (the labs' shapes).

    python -m bench.demand_trace --seed 7 --days 7 > trace.csv
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class LabStart:
    minute: float  # minutes since the trace began (a Monday, 00:00)
    workers: int  # the control plane is always one node


def _background_rate(minute: float) -> float:
    """Lab starts per minute outside bursts."""
    day = int(minute // 1440)
    hour = (minute % 1440) / 60
    # Peak around 17:00, trough around 04:00.
    daily = 0.5 * (1 - math.cos(2 * math.pi * (hour - 5) / 24))
    rate = 0.03 + 0.45 * daily**2
    return rate * (0.5 if day % 7 >= 5 else 1.0)


def _shape(rng: random.Random) -> int:
    return rng.choices((0, 1, 2), weights=(0.3, 0.5, 0.2))[0]


def generate(seed: int = 7, days: int = 7) -> list[LabStart]:
    rng = random.Random(seed)
    starts: list[LabStart] = []
    # Background: a thinned Poisson process (exact for a rate bounded by `peak`).
    peak = 0.5
    minute = 0.0
    end = days * 1440.0
    while True:
        minute += rng.expovariate(peak)
        if minute >= end:
            break
        if rng.random() < _background_rate(minute) / peak:
            starts.append(LabStart(minute, _shape(rng)))
    for day in range(days):
        base = day * 1440
        if day % 7 < 5:
            for hour in (10, 15):
                for _ in range(rng.randint(20, 30)):
                    starts.append(LabStart(base + hour * 60 + rng.uniform(0, 5), _shape(rng)))
        for _ in range(rng.choice((1, 2))):
            at = base + rng.uniform(0, 1440 - 10)
            for _ in range(rng.randint(4, 10)):
                starts.append(LabStart(at + rng.uniform(0, 5), _shape(rng)))
    starts.sort(key=lambda s: s.minute)
    return starts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args(argv)
    sys.stdout.write("minute,workers\n")
    for start in generate(args.seed, args.days):
        sys.stdout.write(f"{start.minute:.3f},{start.workers}\n")


if __name__ == "__main__":
    main()
