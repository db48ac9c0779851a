"""Demand-aware sizing of the warm pool. Pure: the refill workflow and bench/pool_sim.py both use it.

The target of a node class is what the pool must hold so that claims arriving while replacements
boot still find a warm node:

    lead     = refill interval + boot time            (how long a claimed node takes to be replaced)
    rate     = max(recent claim rate, same time yesterday's rate over the lead window)
    expected = rate * lead                            (claims expected before a replacement is free)
    target   = ceil(expected + z * sqrt(expected)) + margin, bounded by [min, max]

`z * sqrt(expected)` is the Poisson safety stock (z = 2 is ~97.7 % of windows covered). The
seasonal term remembers the last week of claims per 5-minute slot: the busier of yesterday and the
same day last week, over the coming lead window, so recurring peaks (classes that start at the same
hour every weekday) are pre-warmed *before* they begin instead of after the first misses. The recent
term follows bursts nobody scheduled: it jumps to the last interval's rate at once and decays with a
short half-life.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

SLOT_MINUTES = 5
SLOTS_PER_DAY = 24 * 60 // SLOT_MINUTES
SLOTS_PER_WEEK = 7 * SLOTS_PER_DAY


class SizingParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    min_size: int = Field(0, ge=0, description="never hold fewer free nodes")
    max_size: int = Field(20, ge=0, description="never hold more free nodes")
    refill_interval: timedelta = timedelta(minutes=1)
    default_boot_time: timedelta = timedelta(minutes=2)
    z: float = Field(2.0, ge=0, description="safety stock in standard deviations of Poisson demand")
    margin: int = Field(0, ge=0, description="extra nodes on top of the estimate")
    half_life: timedelta = timedelta(minutes=10)


class ClassDemand(BaseModel):
    """What the policy remembers about one node class between refills (carried in the refill result)."""

    rate_per_minute: float = 0.0
    last_observed: datetime | None = None
    slot_start: datetime | None = None
    slot_claims: int = 0
    week: list[int] = Field(default_factory=list, description="claims per 5-minute slot of the last 7 days")
    boot_seconds: float | None = None


def _slot_of_week(moment: datetime) -> int:
    return (moment.weekday() * 24 * 60 + moment.hour * 60 + moment.minute) // SLOT_MINUTES


def _slot_floor(moment: datetime) -> datetime:
    minute = (moment.minute // SLOT_MINUTES) * SLOT_MINUTES
    return moment.replace(minute=minute, second=0, microsecond=0)


def observe(state: ClassDemand, now: datetime, claims: int, params: SizingParams) -> ClassDemand:
    """Fold `claims` observed since `state.last_observed` into the estimate."""
    week = list(state.week) or [0] * SLOTS_PER_WEEK
    slot_start = state.slot_start or _slot_floor(now)
    slot_claims = state.slot_claims
    if now - slot_start > timedelta(days=7):  # a long gap: forget the slots in between
        slot_start, slot_claims = _slot_floor(now), 0
    # Close every slot that ended before now; the claims of this observation belong to the last one.
    while now >= slot_start + timedelta(minutes=SLOT_MINUTES):
        week[_slot_of_week(slot_start)] = slot_claims
        slot_start += timedelta(minutes=SLOT_MINUTES)
        slot_claims = 0
    slot_claims += claims

    rate = state.rate_per_minute
    if state.last_observed is None:
        rate = float(claims)
    else:
        minutes = max((now - state.last_observed).total_seconds() / 60, 1e-6)
        decay = 0.5 ** (minutes / (params.half_life.total_seconds() / 60))
        # A burst shows at once (the last interval's rate); quiet returns at the half-life's pace.
        rate = max(claims / minutes, decay * rate + (1 - decay) * (claims / minutes))
    return state.model_copy(
        update={
            "rate_per_minute": rate,
            "last_observed": now,
            "slot_start": slot_start,
            "slot_claims": slot_claims,
            "week": week,
        }
    )


def observe_boot(state: ClassDemand, seconds: float) -> ClassDemand:
    """Learn the boot time (provision -> ready) of the class: an EWMA of what the refill measured."""
    previous = state.boot_seconds
    value = seconds if previous is None else 0.7 * previous + 0.3 * seconds
    return state.model_copy(update={"boot_seconds": value})


def lead_time(state: ClassDemand, params: SizingParams) -> timedelta:
    boot = timedelta(seconds=state.boot_seconds) if state.boot_seconds is not None else params.default_boot_time
    return params.refill_interval + boot


def forecast_rate(state: ClassDemand, now: datetime, params: SizingParams) -> float:
    """Claims per minute to plan for: the recent rate, or the busiest coming slot of yesterday or of
    the same day last week (whichever saw more), looking one lead time plus one slot ahead."""
    rate = state.rate_per_minute
    if state.week:
        horizon = now + lead_time(state, params) + timedelta(minutes=SLOT_MINUTES)
        moment = _slot_floor(now)
        while moment <= horizon:
            this_slot = _slot_of_week(moment)
            yesterday = state.week[(this_slot - SLOTS_PER_DAY) % SLOTS_PER_WEEK]
            last_week = state.week[this_slot]  # not yet overwritten: still last week's
            rate = max(rate, max(yesterday, last_week) / SLOT_MINUTES)
            moment += timedelta(minutes=SLOT_MINUTES)
    return rate


def wanted(state: ClassDemand, now: datetime, params: SizingParams) -> int:
    """What demand alone asks for (before the min/max bounds)."""
    expected = forecast_rate(state, now, params) * lead_time(state, params).total_seconds() / 60
    return math.ceil(expected + params.z * math.sqrt(expected)) + params.margin if expected > 1e-9 else 0


def target(state: ClassDemand, now: datetime, params: SizingParams) -> int:
    """How many warm (free or provisioning) nodes the class should hold now."""
    return max(params.min_size, min(params.max_size, wanted(state, now, params)))
