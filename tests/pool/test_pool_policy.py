"""The demand-aware sizing policy (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workflows import pool_policy
from workflows.pool_policy import ClassDemand, SizingParams

MONDAY = datetime(2026, 11, 2, tzinfo=UTC)
PARAMS = SizingParams(min_size=1, max_size=30, refill_interval=timedelta(minutes=1),
                      default_boot_time=timedelta(minutes=2))


def replay(claims_per_minute: list[int], start: datetime = MONDAY, state: ClassDemand | None = None) -> ClassDemand:
    state = state or ClassDemand()
    for minute, claims in enumerate(claims_per_minute):
        state = pool_policy.observe(state, start + timedelta(minutes=minute), claims, PARAMS)
    return state


def test_quiet_class_holds_the_minimum() -> None:
    state = replay([0] * 60)
    assert pool_policy.target(state, MONDAY + timedelta(hours=1), PARAMS) == 1


def test_target_covers_claims_during_the_lead_time_with_safety_stock() -> None:
    state = replay([2] * 60)  # 2 claims a minute, lead = 1 min refill + 2 min boot -> 6 expected
    target = pool_policy.target(state, MONDAY + timedelta(minutes=60), PARAMS)
    assert 6 + 4 <= target <= 6 + 6  # expected + ~2 sigma


def test_burst_raises_the_target_at_once_and_it_decays_afterwards() -> None:
    state = replay([0] * 30 + [10])
    during = pool_policy.target(state, MONDAY + timedelta(minutes=30), PARAMS)
    assert during >= 30 or during == PARAMS.max_size
    after = replay([0] * 60, start=MONDAY + timedelta(minutes=31), state=state)
    assert pool_policy.target(after, MONDAY + timedelta(minutes=91), PARAMS) <= 2


def test_yesterdays_peak_is_prewarmed_before_it_starts() -> None:
    # Monday: a class of 25 starts at 10:00. Tuesday 09:58, still quiet, the pool grows for it.
    monday = [0] * (24 * 60)
    for minute in range(600, 605):
        monday[minute] = 5
    state = replay(monday)
    tuesday_0958 = MONDAY + timedelta(days=1, hours=9, minutes=58)
    state = replay([0] * (9 * 60 + 58), start=MONDAY + timedelta(days=1), state=state)
    assert pool_policy.target(state, tuesday_0958, PARAMS) >= 15
    quiet = pool_policy.target(state, MONDAY + timedelta(days=1, hours=3), PARAMS)
    assert quiet <= 2


def test_bounds_and_learned_boot_time() -> None:
    state = replay([50] * 10)
    assert pool_policy.target(state, MONDAY + timedelta(minutes=10), PARAMS) == PARAMS.max_size
    slow = pool_policy.observe_boot(replay([1] * 30), 600)
    fast = pool_policy.observe_boot(replay([1] * 30), 10)
    now = MONDAY + timedelta(minutes=30)
    assert pool_policy.target(slow, now, PARAMS) > pool_policy.target(fast, now, PARAMS)


def test_state_survives_a_json_round_trip() -> None:
    state = replay([1, 2, 3])
    assert ClassDemand.model_validate_json(state.model_dump_json()) == state


def test_demand_trace_is_seedable_and_diurnal() -> None:
    from bench.demand_trace import generate

    trace = generate(seed=3, days=2)
    assert trace == generate(seed=3, days=2) and trace != generate(seed=4, days=2)
    night = [s for s in trace if 1 <= (s.minute % 1440) / 60 < 5]
    evening = [s for s in trace if 15 <= (s.minute % 1440) / 60 < 19]
    assert len(evening) > 5 * len(night)
