"""The query engine over events and their rollups.

The dashboard resolves a user's query (dates, timezone, presets) into an
:class:`AggregateSpec` - a half-open UTC interval, at most two groupings, AND-ed
filters - and calls :func:`aggregate`. The engine answers from the rollups
(``stats_rollups``, kept by :mod:`app.modules.events.rollups`) when they cover the
query - local-day rows for one dimension in the tenant's timezone, UTC-hour totals
for hourly series and other whole-hour timezones - and from the raw ``events``
table otherwise. Both paths compute the same base aggregates with the same
definitions:

* additive, always exact: ``events``, ``pageviews``, ``new_users``, ``conversions``,
  ``engagement_msec``, ``revenue``;
* distinct counts: ``users``, ``sessions``, ``engaged_sessions``,
  ``converting_sessions`` - exact (``COUNT(DISTINCT)``) on raw events, HyperLogLog
  estimates with error bounds when merged from hourly sketches.

Every identifier in generated SQL comes from the allow-lists below; every value is a
bound parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.events.rollups import (
    GRAIN_DAY,
    GRAIN_HOUR,
    DistinctCount,
    exact,
    in_slices,
    merge_sketches,
)

# Dimension name -> rollup dimension id (0 is the "all events" total).
DIMENSIONS: dict[str, int] = {
    "event_name": 1,
    "page_path": 2,
    "country": 3,
    "city": 4,
    "device_category": 5,
    "os": 6,
    "browser": 7,
    "source": 8,
    "medium": 9,
    "campaign": 10,
}
TOTAL_DIMENSION = 0
NOT_SET = "(not set)"
TimeGrain = Literal["hour", "day", "week", "month"]
FilterOperator = Literal["is", "is_not", "contains", "not_contains"]
FILTER_OPERATORS: tuple[str, ...] = ("is", "is_not", "contains", "not_contains")
TIME_GRAINS: tuple[str, ...] = ("hour", "day", "week", "month")

ADDITIVE = ("events", "pageviews", "new_users", "conversions", "engagement_msec", "revenue")
DISTINCT = ("users", "sessions", "engaged_sessions", "converting_sessions")

# GA4: an engaged session lasted 10 s or more, had two or more page views, had a
# conversion, or was flagged engaged by the collector.
ENGAGED_MIN_MSEC = 10_000
ENGAGED_MIN_PAGEVIEWS = 2
PAGE_VIEW = "page_view"
FIRST_VISIT = "first_visit"


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
_EXACT_COLUMNS = {"users": "users_exact", "sessions": "sessions_exact"}
_SKETCH_COLUMNS = {
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


def uses_rollups(spec: AggregateSpec) -> bool:
    return rollup_plan(spec) is not None


async def aggregate(session: AsyncSession, spec: AggregateSpec) -> AggregateResult:
    """Aggregate the tenant's events for ``spec`` from rollups when possible."""
    plan = rollup_plan(spec)
    if plan is not None:
        groups, total = await _from_rollups(session, spec, *plan)
        return AggregateResult(groups, "rollups", total)
    return AggregateResult(await _from_events(session, spec), "events")


# --- shared SQL pieces --------------------------------------------------------------


def _bucket_sql(grain: TimeGrain, column: str) -> str:
    """The bucket a timestamp falls in, as a timestamptz (hour) or a local date."""
    local = f"({column} AT TIME ZONE :tz)"
    if grain == "hour":
        # The instant the local hour starts: shifting by the zone's sub-hour offset
        # keeps 30/45-minute zones right; a repeated autumn hour stays two buckets.
        return (
            f"date_trunc('hour', {column} + make_interval(mins => :offset_minutes), 'UTC')"
            " - make_interval(mins => :offset_minutes)"
        )
    return f"date_trunc('{grain}', {local})::date"


def _group_sql(key: str, column: str, dimension_column: str) -> str:
    grain = time_grain(key)
    if grain is not None:
        return _bucket_sql(grain, column)
    return dimension_column if dimension_column else dimension_sql(key)


def _filter_sql(
    filters: Sequence[Filter], params: dict[str, Any], value_sql: dict[str, str]
) -> str:
    clauses: list[str] = []
    for i, flt in enumerate(filters):
        column = value_sql[flt.dimension]
        name = f"f{i}"
        if flt.operator in ("is", "is_not"):
            params[name] = list(flt.values)
            clause = f"{column} = ANY(:{name})"
        else:
            params[name] = [v.lower() for v in flt.values]
            clause = (
                f"EXISTS (SELECT 1 FROM unnest(CAST(:{name} AS text[])) AS n(v)"
                f" WHERE strpos(lower({column}), n.v) > 0)"
            )
        clauses.append(f"NOT ({clause})" if flt.operator.startswith(("is_not", "not_")) else clause)
    return "".join(f" AND {c}" for c in clauses)


def _params(spec: AggregateSpec) -> dict[str, Any]:
    return {
        "tenant_id": spec.tenant_id,
        "start": spec.start,
        "end": spec.end,
        "tz": spec.timezone,
        "offset_minutes": spec.offset_minutes,
        "conversions": list(spec.conversion_events),
    }


# --- raw events: exact ----------------------------------------------------------------


async def _from_events(session: AsyncSession, spec: AggregateSpec) -> dict[GroupKey, Aggregates]:
    params = _params(spec)
    value_sql = {name: dimension_sql(name, "e.") for name in DIMENSIONS}
    groups = [_group_sql(k, "e.occurred_at", value_sql.get(k, "")) for k in spec.group_by]
    select_groups = "".join(f"{g} AS g{i}, " for i, g in enumerate(groups))
    group_clause = f"GROUP BY {', '.join(f'g{i}' for i in range(len(groups)))}" if groups else ""
    where = _filter_sql(spec.filters, params, value_sql)
    sql = f"""
        WITH matched AS (
            SELECT e.*
            FROM events e
            WHERE e.tenant_id = :tenant_id AND e.occurred_at >= :start AND e.occurred_at < :end
            {where}
        ),
        engaged AS (
            SELECT s.user_id, s.session_id
            FROM events s
            WHERE s.tenant_id = :tenant_id
              AND (s.user_id, s.session_id) IN (
                  SELECT DISTINCT user_id, session_id FROM matched
                  WHERE user_id IS NOT NULL AND session_id IS NOT NULL)
            GROUP BY s.user_id, s.session_id
            HAVING coalesce(bool_or(s.session_engaged), false)
                OR coalesce(sum(s.engagement_time_msec), 0) >= {ENGAGED_MIN_MSEC}
                OR count(*) FILTER (WHERE s.event_name = '{PAGE_VIEW}') >= {ENGAGED_MIN_PAGEVIEWS}
                OR bool_or(s.event_name = ANY(:conversions))
        )
        SELECT {select_groups}
            count(*) AS events,
            count(*) FILTER (WHERE e.event_name = '{PAGE_VIEW}') AS pageviews,
            count(*) FILTER (WHERE e.event_name = '{FIRST_VISIT}') AS new_users,
            count(*) FILTER (WHERE e.event_name = ANY(:conversions)) AS conversions,
            coalesce(sum(e.engagement_time_msec), 0) AS engagement_msec,
            coalesce(sum(e.revenue), 0) AS revenue,
            count(DISTINCT e.user_id) AS users,
            count(DISTINCT (e.user_id, e.session_id))
                FILTER (WHERE e.user_id IS NOT NULL AND e.session_id IS NOT NULL) AS sessions,
            count(DISTINCT (e.user_id, e.session_id))
                FILTER (WHERE g.user_id IS NOT NULL) AS engaged_sessions,
            count(DISTINCT (e.user_id, e.session_id))
                FILTER (WHERE e.user_id IS NOT NULL AND e.session_id IS NOT NULL
                        AND e.event_name = ANY(:conversions)) AS converting_sessions
        FROM matched e
        LEFT JOIN engaged g ON g.user_id = e.user_id AND g.session_id = e.session_id
        {group_clause}
    """
    result = await session.execute(text(sql), params)
    out: dict[GroupKey, Aggregates] = {}
    n = len(groups)
    for row in result.all():
        out[tuple(row[:n])] = Aggregates(
            events=row.events,
            pageviews=row.pageviews,
            new_users=row.new_users,
            conversions=row.conversions,
            engagement_msec=int(row.engagement_msec),
            revenue=Decimal(row.revenue),
            users=exact(row.users),
            sessions=exact(row.sessions),
            engaged_sessions=exact(row.engaged_sessions),
            converting_sessions=exact(row.converting_sessions),
        )
    return out


# --- hourly rollups: additive sums plus merged sketches -------------------------------


async def _from_rollups(
    session: AsyncSession, spec: AggregateSpec, grain: int, dim_name: str | None
) -> tuple[dict[GroupKey, Aggregates], int | None]:
    params = _params(spec)
    params["grain"] = grain
    params["dim"] = DIMENSIONS[dim_name] if dim_name else TOTAL_DIMENSION
    value_sql = dict.fromkeys(DIMENSIONS, "r.value")
    groups = [_group_sql(k, "r.bucket", "r.value") for k in spec.group_by]
    n = len(groups)
    where = (
        "r.tenant_id = :tenant_id AND r.grain = :grain AND r.dim = :dim"
        " AND r.bucket >= :start AND r.bucket < :end"
    ) + _filter_sql(spec.filters, params, value_sql)
    sums = """
            coalesce(sum(r.events), 0) AS events,
            coalesce(sum(r.pageviews), 0) AS pageviews,
            coalesce(sum(r.new_users), 0) AS new_users,
            coalesce(sum(r.conversions), 0) AS conversions,
            coalesce(sum(r.engagement_msec), 0) AS engagement_msec,
            coalesce(sum(r.revenue), 0) AS revenue"""
    # A group of one rollup row (a day of a daily series, say) has its exact distinct
    # users and sessions in the row: no sketch to send, decode or merge for those.
    sketches = (
        ", count(*) AS rollup_rows, sum(r.users_count) AS users_exact,"
        " sum(r.sessions_count) AS sessions_exact"
        + "".join(
            f", CASE WHEN {'count(*) > 1' if name in _EXACT_COLUMNS else 'true'}"
            f" THEN array_agg(r.{column}) FILTER (WHERE r.{column} IS NOT NULL) END AS {name}"
            for name, column in _SKETCH_COLUMNS.items()
            if name in spec.needs
        )
    )
    top = spec.top if n == 1 and dim_name and spec.group_by == (dim_name,) else None
    if top is not None and top.rank in RANKABLE:
        # Rank on the sums alone, then fetch sketches for the winners only.
        params["top_n"] = top.n
        direction = "DESC" if top.descending else "ASC"
        ranked = (
            (
                await session.execute(
                    text(
                        f"""
                        SELECT r.value AS g0, {sums},
                            {RANKABLE[top.rank]} AS rank, count(*) OVER () AS total_groups
                        FROM stats_rollups r WHERE {where}
                        GROUP BY r.value
                        ORDER BY rank {direction}, r.value ASC
                        LIMIT :top_n
                        """
                    ),
                    params,
                )
            )
            .mappings()
            .all()
        )
        sketch_rows: dict[str, Any] = {}
        if ranked and sketches:
            params["winners"] = [row["g0"] for row in ranked]
            found = await session.execute(
                text(
                    f"SELECT r.value AS g0 {sketches} FROM stats_rollups r"
                    f" WHERE {where} AND r.value = ANY(:winners) GROUP BY r.value"
                ),
                params,
            )
            sketch_rows = {row["g0"]: row for row in found.mappings().all()}
        rows: Sequence[Any] = [{**row, **(sketch_rows.get(row["g0"]) or {})} for row in ranked]
    else:
        top = None
        select_groups = "".join(f"{g} AS g{i}, " for i, g in enumerate(groups))
        group_clause = f"GROUP BY {', '.join(f'g{i}' for i in range(n))}" if groups else ""
        sql = f"""
            SELECT {select_groups} {sums} {sketches}
            FROM stats_rollups r WHERE {where}
            {group_clause}
        """
        rows = (await session.execute(text(sql), params)).mappings().all()
    if not groups and rows and rows[0]["events"] == 0:
        return {}, None
    total_groups = (int(rows[0]["total_groups"]) if rows else 0) if top is not None else None

    def build(row: Any) -> tuple[GroupKey, Aggregates]:
        distinct = {name: merge_sketches(row.get(name) or ()) for name in _SKETCH_COLUMNS}
        if row.get("rollup_rows") == 1:
            for name, column in _EXACT_COLUMNS.items():
                if name in spec.needs:
                    distinct[name] = exact(int(row[column]))
        return tuple(row[f"g{i}"] for i in range(n)), Aggregates(
            events=int(row["events"]),
            pageviews=int(row["pageviews"]),
            new_users=int(row["new_users"]),
            conversions=int(row["conversions"]),
            engagement_msec=int(row["engagement_msec"]),
            revenue=Decimal(row["revenue"]),
            users=distinct["users"],
            sessions=distinct["sessions"],
            engaged_sessions=distinct["engaged_sessions"],
            converting_sessions=distinct["converting_sessions"],
        )

    # Merging runs on the loop in short slices (threads would contend for the GIL).
    return dict(await in_slices(rows, build)), total_groups
