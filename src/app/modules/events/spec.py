"""What the query engine is asked: dimensions, filters, groupings and the aggregates it
returns, and which rollups can answer a query (:func:`rollup_plan`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from app.modules.events.definitions import (
    DIMENSIONS,
    GRAIN_DAY,
    GRAIN_HOUR,
    GRAIN_MONTH,
    GRAIN_WEEK,
)
from app.modules.events.sketches import DistinctCount, exact

NOT_SET = "(not set)"
TimeGrain = Literal["hour", "day", "week", "month"]
FilterOperator = Literal["is", "is_not", "contains", "not_contains"]
FILTER_OPERATORS: tuple[str, ...] = ("is", "is_not", "contains", "not_contains")
TIME_GRAINS: tuple[str, ...] = ("hour", "day", "week", "month")

DISTINCT = ("users", "sessions", "engaged_sessions", "converting_sessions")


def dimension_sql(name: str, column_prefix: str = "") -> str:
    """A dimension's value as shown to users: NULL and '' read as '(not set)'."""
    if name not in DIMENSIONS:
        raise ValueError(f"unknown dimension {name!r}")
    return f"coalesce(nullif({column_prefix}{name}, ''), '{NOT_SET}')"


@dataclass(frozen=True)
class Filter:
    operator: FilterOperator
    dimension: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class TopN:
    """Only the first ``n`` groups by ``rank`` (one plain dimension, rollups only)."""

    rank: str
    descending: bool
    n: int


# Base aggregates a rollup can rank groups by: exact sums, and per-bucket exact
# distinct counts summed (an upper bound that preselects candidates).
RANKABLE: dict[str, str] = {
    "events": "sum(r.events)",
    "pageviews": "sum(r.pageviews)",
    "new_users": "sum(r.new_users)",
    "conversions": "sum(r.conversions)",
    "revenue": "sum(r.revenue)",
    "users": "sum(r.users_count)",
    "sessions": "sum(r.sessions_count)",
}
# Distinct counts a single rollup row holds exactly (its bucket's own count).
EXACT_COLUMNS = {"users": "users_exact", "sessions": "sessions_exact"}
SKETCH_COLUMNS = {
    "users": "users_hll",
    "sessions": "sessions_hll",
    "engaged_sessions": "engaged_hll",
    "converting_sessions": "converting_hll",
}


@dataclass(frozen=True)
class AggregateSpec:
    """One aggregation: ``[start, end)`` in UTC, grouped by up to two keys."""

    tenant_id: str
    start: datetime
    end: datetime
    timezone: str
    # Each group key is a dimension name or "time:<grain>".
    group_by: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    conversion_events: tuple[str, ...] = ()
    # Minutes past the hour of the zone's UTC offset (30 for India): hourly rollups
    # only line up with local hours when it is 0.
    offset_minutes: int = 0
    # The timezone the tenant's day rollups were built in (None: none built).
    rollup_timezone: str | None = None
    # False when the rollups were built with other conversion events.
    rollups_current: bool = True
    # Distinct counts the caller needs (the rest may be left at zero).
    needs: frozenset[str] = frozenset(DISTINCT)
    top: TopN | None = None


@dataclass
class Aggregates:
    """Base aggregates of one group; derived metrics are computed by the dashboard."""

    events: int = 0
    pageviews: int = 0
    new_users: int = 0
    conversions: int = 0
    engagement_msec: int = 0
    revenue: Decimal = Decimal(0)
    users: DistinctCount = field(default_factory=lambda: exact(0))
    sessions: DistinctCount = field(default_factory=lambda: exact(0))
    engaged_sessions: DistinctCount = field(default_factory=lambda: exact(0))
    converting_sessions: DistinctCount = field(default_factory=lambda: exact(0))


GroupKey = tuple[Any, ...]


@dataclass
class AggregateResult:
    groups: dict[GroupKey, Aggregates]
    source: Literal["rollups", "events"]
    # How many groups there were before ``top`` cut them (None: all are in groups).
    total_groups: int | None = None


def time_grain(key: str) -> TimeGrain | None:
    if key.startswith("time:"):
        grain = key.removeprefix("time:")
        if grain in TIME_GRAINS:
            return grain  # type: ignore[return-value]
        raise ValueError(f"unknown time grain {grain!r}")
    return None


def rollup_plan(spec: AggregateSpec) -> tuple[int, str | None] | None:
    """Which rollup grain and dimension answer ``spec``, or None for raw events."""
    grains = [time_grain(k) for k in spec.group_by]
    grain = next((g for g in grains if g is not None), None)
    dims = {k for k in spec.group_by if time_grain(k) is None} | {f.dimension for f in spec.filters}
    if len(dims) > 1 or not spec.rollups_current:
        return None
    dim = next(iter(dims)) if dims else None
    if grain != "hour" and spec.rollup_timezone == spec.timezone:
        return GRAIN_DAY, dim
    if dim is None and spec.offset_minutes % 60 == 0:
        return GRAIN_HOUR, None
    return None


# Which week/month rows may stand in for day rows, by the query's time grouping: a week
# row can fill a week group but not a day or month group (weeks straddle months).
_COARSE_FOR_GROUPING: dict[TimeGrain | None, tuple[int, ...]] = {
    None: (GRAIN_MONTH, GRAIN_WEEK),
    "week": (GRAIN_WEEK,),
    "month": (GRAIN_MONTH,),
    "day": (),
    "hour": (),
}
# The shortest range that can hold a whole local week or month (a day may be 23 hours).
_SHORTEST = {
    GRAIN_WEEK: timedelta(days=7) - timedelta(hours=1),
    GRAIN_MONTH: timedelta(days=28) - timedelta(hours=1),
}


def coarse_grains(spec: AggregateSpec, plan: tuple[int, str | None]) -> tuple[int, ...]:
    """The week/month grains a day-rollup plan may read for whole local weeks and months
    of ``spec``'s range (which ones exist is up to the statement: a period is read from
    its coarse rows only when they are built, from its day rows otherwise)."""
    if plan[0] != GRAIN_DAY:
        return ()
    grain = next((g for g in map(time_grain, spec.group_by) if g is not None), None)
    length = spec.end - spec.start
    return tuple(g for g in _COARSE_FOR_GROUPING[grain] if length >= _SHORTEST[g])
