"""The `pool:` block of a node class: how many warm nodes the operator wants, declared. Pure.

    pool:
      min: 1                 # never fewer free/provisioning nodes than this
      max: 8                 # never more (demand is capped here)
      schedule:              # higher minimums at given times (UTC)
        weekdays 08-18: 6
        sat 09:30-12: 3
        daily 22-02: 2       # an end before the start runs past midnight

A schedule key is `DAYS START-END`: DAYS is `daily`, `weekdays` (mon-fri), `weekends` (sat, sun), a
day (`mon` ... `sun`), a range (`mon-thu`) or a comma list of those (`mon,wed,fri-sun`); START and END
are `HH` or `HH:MM` in UTC, END may be `24`. The window holds from START up to (not including) END.
The value is the minimum while the window holds. At any moment the floor is the largest of `min` and
every window that holds; the demand estimate (workflows/pool_policy.py) raises the target above the
floor, `max` caps it. Which source wins against `labrador pool size` is decided in
workflows/pool_sizing.py (docs/pool.md, "Sizing").
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY = "(?:mon|tue|wed|thu|fri|sat|sun)"
_DAY_ITEM = f"{_DAY}(?:-{_DAY})?"
_TIME = "(?:[01][0-9]|2[0-4])(?::[0-5][0-9])?"
WINDOW_PATTERN = f"^(?:daily|weekdays|weekends|{_DAY_ITEM}(?:,{_DAY_ITEM})*) {_TIME}-{_TIME}$"
_WINDOW_RE = re.compile(
    rf"^(?P<days>\S+) (?P<start>{_TIME})-(?P<end>{_TIME})$"
)
_NAMED = {"daily": set(range(7)), "weekdays": set(range(5)), "weekends": {5, 6}}


class Window(NamedTuple):
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after midnight
    end: int  # minutes after midnight, 1..1440; end <= start: runs past midnight

    def holds(self, moment: datetime) -> bool:
        minute = moment.hour * 60 + moment.minute
        day = moment.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        return (day in self.days and minute >= self.start) or ((day - 1) % 7 in self.days and minute < self.end)


def _minutes(text: str) -> int:
    hours, _, minutes = text.partition(":")
    value = int(hours) * 60 + int(minutes or 0)
    if value > 24 * 60:
        raise ValueError(f"{text!r} is past 24:00")
    return value


def _days(text: str) -> frozenset[int]:
    if text in _NAMED:
        return frozenset(_NAMED[text])
    days: set[int] = set()
    for item in text.split(","):
        first, _, last = item.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(
                f"{item!r} is not a day: write daily, weekdays, weekends, mon..sun, a range like mon-fri "
                "or a comma list"
            )
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


def parse_window(text: str) -> Window:
    """`weekdays 08-18` -> Window; ValueError naming what is wrong."""
    match = _WINDOW_RE.fullmatch(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a window like 'weekdays 08-18' or 'sat 09:30-12' (DAYS HH[:MM]-HH[:MM], UTC)"
        )
    start, end = _minutes(match["start"]), _minutes(match["end"])
    if start == 24 * 60:
        raise ValueError(f"{text!r}: a window cannot start at 24")
    if start == end:
        raise ValueError(f"{text!r} is an empty window (start and end are the same time)")
    return Window(_days(match["days"]), start, end)


def _window(text: str) -> str:
    parse_window(text)
    return text


WindowKey = Annotated[str, AfterValidator(_window), WithJsonSchema({"type": "string", "pattern": WINDOW_PATTERN})]


class PoolSizing(BaseModel):
    """A node class's declared warm-pool size (node-classes.yaml `pool:`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: int = Field(0, ge=0, le=1000, description="free or provisioning nodes the pool always holds")
    max: int = Field(10, ge=0, le=1000, description="the pool never holds more (demand is capped here)")
    schedule: dict[WindowKey, Annotated[int, Field(ge=0, le=1000)]] = Field(
        default_factory=dict,
        description="higher minimums at given times (UTC), e.g. {'weekdays 08-18': 6}; the largest that holds wins",
        json_schema_extra={"additionalProperties": False},
    )

    @model_validator(mode="after")
    def _bounds(self) -> PoolSizing:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is more than max {self.max}")
        over = [f"{window!r}: {value}" for window, value in self.schedule.items() if value > self.max]
        if over:
            raise ValueError(f"schedule minimum above max {self.max}: {', '.join(over)}")
        return self

    def floor_at(self, moment: datetime) -> tuple[int, str]:
        """The minimum at `moment` (UTC) and where it comes from: 'min' or "schedule 'weekdays 08-18'"."""
        floor, reason = self.min, "min"
        for window, value in sorted(self.schedule.items()):
            if value > floor and parse_window(window).holds(moment):
                floor, reason = value, f"schedule {window!r}"
        return floor, reason
