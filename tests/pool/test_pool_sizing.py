"""Declared pool sizing: the `pool:` block of node-classes.yaml, its schedule format, where each bound
comes from (override > catalog > default) and why a target is what it is. Pure: no servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from labs.loader import CatalogError, load_catalog
from labs.models import NodeClass, Role
from labs.pool_sizing import PoolSizing, parse_window
from labs.schema import node_classes_schema
from tests.catalog_texts import node_class
from workflows import pool_sizing
from workflows.pool_models import ClassSizing, PoolRefillInput
from workflows.pool_policy import ClassDemand

TUESDAY_9 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # a Tuesday
SATURDAY_23 = datetime(2026, 12, 5, 23, 0, tzinfo=UTC)


def at(day: datetime, hour: int, minute: int = 0) -> datetime:
    return day.replace(hour=hour, minute=minute)


def test_schedule_windows_hold_when_an_operator_reads_them() -> None:
    pool = PoolSizing(min=1, max=8, schedule={"weekdays 08-18": 6, "sat 09:30-12": 3, "daily 22-02": 2})
    assert pool.floor_at(TUESDAY_9) == (6, "schedule 'weekdays 08-18'")
    assert pool.floor_at(at(TUESDAY_9, 8)) == (6, "schedule 'weekdays 08-18'")  # start included
    assert pool.floor_at(at(TUESDAY_9, 18)) == (1, "min")  # end excluded
    assert pool.floor_at(at(SATURDAY_23, 9, 29)) == (1, "min")
    assert pool.floor_at(at(SATURDAY_23, 9, 30)) == (3, "schedule 'sat 09:30-12'")
    assert pool.floor_at(SATURDAY_23) == (2, "schedule 'daily 22-02'")
    assert pool.floor_at(SATURDAY_23 + timedelta(hours=2, minutes=59)) == (2, "schedule 'daily 22-02'")  # Sun 01:59
    assert pool.floor_at(SATURDAY_23 + timedelta(hours=3)) == (1, "min")  # Sun 02:00


@pytest.mark.parametrize(("text", "days", "start", "end"), [
    ("daily 00-24", set(range(7)), 0, 1440),
    ("weekends 10-11:15", {5, 6}, 600, 675),
    ("mon,wed,fri-sun 07-09", {0, 2, 4, 5, 6}, 420, 540),
    ("sat-mon 22-06", {5, 6, 0}, 1320, 360),
])
def test_window_format(text: str, days: set[int], start: int, end: int) -> None:
    window = parse_window(text)
    assert (set(window.days), window.start, window.end) == (days, start, end)


@pytest.mark.parametrize(("text", "says"), [
    ("weekday 08-18", "'weekday' is not a day"),
    ("mon 8-18", "is not a window like 'weekdays 08-18'"),
    ("Mon 08-18", "'Mon' is not a day"),
    ("mon 08-08", "empty window"),
    ("mon 24-02", "cannot start at 24"),
    ("mon 08-25", "is not a window"),
])
def test_bad_windows_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_window(text)


# Lines: 1 node_classes, 2-5 wk, 6-8 its pool; 9-12 wk2, 13-18 its pool (the positions asserted below).
CLASSES = "node_classes:\n" + node_class("wk", "worker", more="""\
    pool:
      min: 3
      max: 2
""") + node_class("wk2", "worker", more="""\
    pool:
      max: 4
      schedule:
        weekday 08-18: 2
        mon 09-10: -1
      maximum: 3
""")
LAB = "name: l\ntitle: L\nnodes: [{role: controlplane, class: cp}]\n"


def test_a_bad_pool_block_is_reported_where_it_is(tmp_path: Path) -> None:
    (tmp_path / "node-classes.yaml").write_text(CLASSES)
    (tmp_path / "l.yaml").write_text(LAB)
    with pytest.raises(CatalogError) as caught:
        load_catalog(tmp_path)
    errors = [f"{e.line}:{e.column}: {e.path}: {e.message}" for e in caught.value.errors
              if e.file.endswith("classes.yaml")]
    assert errors == [
        "7:7: node_classes[0].pool: min 3 is more than max 2",
        "16:9: node_classes[1].pool.schedule['weekday 08-18']: 'weekday' is not a day: write daily, weekdays, "
        "weekends, mon..sun, a range like mon-fri or a comma list (got 'weekday 08-18')",
        "17:20: node_classes[1].pool.schedule['mon 09-10']: Input should be greater than or equal to 0 (got -1)",
        "18:7: node_classes[1].pool.maximum: unknown field 'maximum' (did you mean 'max'?)",
    ], errors


def test_the_json_schema_knows_the_pool_block() -> None:
    schema = node_classes_schema()
    committed = json.loads((Path(__file__).resolve().parents[2] / "labs" / "node-classes.schema.json").read_text())
    assert committed == schema, (
        "regenerate: python -m labrador labs schema node-classes > labs/node-classes.schema.json"
    )
    base = {"name": "wk", "role": "worker", "image": "r.example/x:v1", "kubernetes_version": "1.31.4"}
    good = {"node_classes": [{**base, "pool": {"min": 1, "max": 8, "schedule": {"weekdays 08-18": 6}}}]}
    jsonschema.validate(good, schema)
    for pool in ({"min": -1}, {"schedule": {"weekday 08-18": 6}}, {"schedule": {"mon 08-18": "six"}}, {"size": 2}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"node_classes": [{**base, "pool": pool}]}, schema)


WK = NodeClass(name="wk", role=Role.WORKER, image="r.example/x:v1", kubernetes_version="1.31.4",
               pool=PoolSizing(min=1, max=6, schedule={"weekdays 08-18": 4}))
BARE = WK.model_copy(update={"pool": None})


def test_override_beats_catalog_beats_default_bound_by_bound() -> None:
    plain = PoolRefillInput()
    resolved = pool_sizing.resolve(plain, WK, "wk", TUESDAY_9)
    assert (resolved.params.min_size, resolved.params.max_size) == (4, 6)
    assert resolved.floor_reason == "schedule 'weekdays 08-18'"
    assert pool_sizing.resolve(plain, WK, "wk", SATURDAY_23).floor_reason == "min"
    assert pool_sizing.resolve(plain, BARE, "wk", TUESDAY_9).params.max_size == 10  # built-in 0..10

    only_min = PoolRefillInput(sizing={"wk": ClassSizing(min_size=2)})
    resolved = pool_sizing.resolve(only_min, WK, "wk", TUESDAY_9)  # a flat floor replaces min and schedule
    assert (resolved.params.min_size, resolved.params.max_size) == (2, 6)
    assert (resolved.floor_reason, resolved.max_reason) == ("override min", "max")

    both = PoolRefillInput(sizing={"wk": ClassSizing(min_size=0, max_size=1)}, refill_interval=timedelta(seconds=30))
    resolved = pool_sizing.resolve(both, WK, "wk", TUESDAY_9)
    assert (resolved.params.min_size, resolved.params.max_size, resolved.max_reason) == (0, 1, "override max")
    assert resolved.params.refill_interval == timedelta(seconds=30)

    default = PoolRefillInput(default_sizing=ClassSizing(min_size=0, max_size=0))
    assert pool_sizing.resolve(default, BARE, "wk", TUESDAY_9).params.max_size == 0
    assert pool_sizing.resolve(default, WK, "wk", TUESDAY_9).params.max_size == 6  # the catalog beats the default


def test_target_reason_names_the_bound_that_decided() -> None:
    from workflows import pool_policy

    resolved = pool_sizing.resolve(PoolRefillInput(), WK, "wk", TUESDAY_9)
    assert pool_sizing.target_reason(0, 9, resolved, drained=True) == "drained"
    assert pool_sizing.target_reason(4, 0, resolved, drained=False) == "schedule 'weekdays 08-18'"
    assert pool_sizing.target_reason(5, 5, resolved, drained=False) == "demand"
    assert pool_sizing.target_reason(6, 20, resolved, drained=False) == "max (demand wants 20)"
    bare = pool_sizing.resolve(PoolRefillInput(), BARE, "wk", TUESDAY_9)
    assert pool_sizing.target_reason(0, 0, bare, drained=False) == "no demand"
    busy = ClassDemand(rate_per_minute=30.0, last_observed=TUESDAY_9)
    assert pool_policy.wanted(busy, TUESDAY_9, resolved.params) > 6
    assert pool_policy.target(busy, TUESDAY_9, resolved.params) == 6


def test_bounds_of_two_sources_that_disagree_go_to_the_higher_source() -> None:
    # `pool size wk --max 2` while the catalog's schedule asks for 4: the operator's cap holds.
    capped = PoolRefillInput(sizing={"wk": ClassSizing(max_size=2)})
    resolved = pool_sizing.resolve(capped, WK, "wk", TUESDAY_9)
    assert (resolved.params.min_size, resolved.params.max_size) == (2, 2)
    assert pool_sizing.target_reason(2, 0, resolved, drained=False) == "override max"
    # `pool size wk --min 8` and then the catalog's max edited down to 6: the operator's floor holds.
    floored = PoolRefillInput(sizing={"wk": ClassSizing(min_size=8)})
    resolved = pool_sizing.resolve(floored, WK, "wk", TUESDAY_9)
    assert (resolved.params.min_size, resolved.params.max_size, resolved.floor_reason) == (8, 8, "override min")
