"""Which bounds a node class's pool target has right now, and why the target is what it is. Pure.

Precedence, per bound, highest first:
1. the operator's override in the refill schedule's argument (`labrador pool size CLASS --min/--max`,
   `PoolRefillInput.sizing`): `--min` is a flat floor that replaces the catalog's `min` *and* its
   `schedule`; `--max` replaces `max`. `labrador pool size CLASS --reset` drops the override.
2. the class's `pool:` block in node-classes.yaml (labs/pool_sizing.py), read by every refill through
   its plan activity, so an edited catalog applies at the next refill;
3. `PoolRefillInput.default_sizing`, then the built-in 0..10.

The override wins because it is the operator's decision of the moment (an exam this afternoon), like
`pool drain`; the catalog is the standing declaration. When two sources' bounds disagree (`--max 4`
while the catalog's schedule asks for 6), the bound of the higher source wins: the pool holds 4, why
"override max". The demand estimate (workflows/pool_policy.py) raises the target above the floor; the
max caps it.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from labs.models import NodeClass
from workflows.pool_models import ClassSizing, PoolRefillInput
from workflows.pool_policy import SizingParams

BUILTIN_MIN = 0
BUILTIN_MAX = 10


class ResolvedSizing(BaseModel):
    model_config = ConfigDict(frozen=True)

    params: SizingParams
    floor_reason: str  # "min", "schedule 'weekdays 08-18'", "override min", "default min"
    max_reason: str  # "max", "override max", "default max"


def _first(*candidates: tuple[int | None, str]) -> tuple[int, str, int]:
    """The first candidate given: its value, its reason, and its rank (0 = highest precedence)."""
    for rank, (value, reason) in enumerate(candidates):
        if value is not None:
            return value, reason, rank
    raise AssertionError("the last candidate is never None")


def resolve(input: PoolRefillInput, node_class: NodeClass | None, name: str, now: datetime) -> ResolvedSizing:
    override = input.sizing.get(name, ClassSizing())
    default = input.default_sizing
    declared = node_class.pool if node_class is not None else None
    catalog_floor: tuple[int | None, str] = (None, "")
    if declared is not None:
        catalog_floor = declared.floor_at(now)
    floor, floor_reason, floor_rank = _first(
        (override.min_size, "override min"),
        catalog_floor,
        (default.min_size, "default min"),
        (BUILTIN_MIN, "default min"),
    )
    ceiling, max_reason, max_rank = _first(
        (override.max_size, "override max"),
        (declared.max if declared is not None else None, "max"),
        (default.max_size, "default max"),
        (BUILTIN_MAX, "default max"),
    )
    if floor > ceiling:  # bounds from two sources that disagree: the one of higher precedence wins
        if max_rank < floor_rank:  # e.g. `pool size --max 4` while the catalog's schedule asks for 6
            floor, floor_reason = ceiling, max_reason
        else:  # e.g. `pool size --min 6` while an edited catalog now says max 4
            ceiling, max_reason = floor, floor_reason
    params = SizingParams(
        min_size=floor,
        max_size=ceiling,
        margin=override.margin if name in input.sizing else default.margin,
        refill_interval=input.refill_interval,
        default_boot_time=input.default_boot_time,
    )
    return ResolvedSizing(params=params, floor_reason=floor_reason, max_reason=max_reason)


def target_reason(target: int, wanted: int, sizing: ResolvedSizing, drained: bool) -> str:
    """Why the refill aims at `target`: 'drained', the floor's source, 'demand', or the max's source."""
    if drained:
        return "drained"
    params = sizing.params
    if target >= params.max_size and wanted > params.max_size:
        return f"{sizing.max_reason} (demand wants {wanted})"
    if target > params.min_size:
        return "demand"
    if params.min_size > 0:
        return sizing.floor_reason
    return "no demand"
