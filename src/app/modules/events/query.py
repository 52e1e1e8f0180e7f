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

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.events.rollups import (
    GRAIN_DAY,
    GRAIN_HOUR,
    DistinctCount,
    exact,
    in_slices,
)
from app.modules.events.sketches_merge import merge_blobs

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


_BIND = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


@lru_cache(maxsize=1024)
def _prefixed_sql(sql: str, prefix: str) -> str:
    # The SQL of a part depends only on the query's shape (values are bound), so a
    # dashboard's few shapes are rewritten once, not per request.
    return _BIND.sub(rf":{prefix}\1", sql)


def _prefixed(sql: str, params: dict[str, Any], prefix: str) -> tuple[str, dict[str, Any]]:
    """Give one part's bind parameters names of their own within a shared statement."""
    return _prefixed_sql(sql, prefix), {f"{prefix}{k}": v for k, v in params.items()}


@lru_cache(maxsize=512)
def _statement(sql: str) -> TextClause:
    return text(sql)


def _group_type(key: str) -> str:
    grain = time_grain(key)
    if grain is None:
        return "text"
    return "timestamptz" if grain == "hour" else "date"


# --- one statement per widget -----------------------------------------------------------
#
# A widget asks for several aggregations at once: its groups, the totals, and the same
# for a comparison period. Each is a *part*; all parts go to PostgreSQL as one statement
# (CTEs plus UNION ALL, every row tagged with its part), so a widget costs one round
# trip whatever it shows. Every part returns the same columns: group keys, additive
# sums, exact distinct counts (raw events) or sketch arrays (rollups), the number of
# rollup rows merged and, for a ranked part, the number of groups before the cut.

_SUMS = ("events", "pageviews", "new_users", "conversions", "engagement_msec")
_EXACT_DISTINCT_NULLS = "".join(f", NULL::bigint AS {name}" for name in DISTINCT)
_ROLLUP_NULLS = (
    ", NULL::bigint AS rollup_rows, NULL::bigint AS users_exact, NULL::bigint AS sessions_exact"
    + "".join(f", NULL::bytea[] AS {name}_hll" for name in _SKETCH_COLUMNS)
)


@dataclass
class _Part:
    """One part of a widget's statement, as SQL pieces."""

    ctes: list[str]
    select: str
    params: dict[str, Any]
    source: Literal["rollups", "events"]


def _group_columns(
    groups: Sequence[str], width: int, types: Sequence[str], prefix: str = ""
) -> str:
    """``g0, g1, ...`` padded with typed NULLs to the statement's width."""
    return "".join(
        f"{prefix}g{k}" + ", " if k < len(groups) else f"NULL::{types[k]} AS g{k}, "
        for k in range(width)
    )


def _events_part(
    spec: AggregateSpec, tag: str, totals_tag: str | None, width: int, types: Sequence[str]
) -> _Part:
    """Exact aggregates from raw events; with ``totals_tag`` the totals ride along as a
    second grouping set of the same scan."""
    params = _params(spec)
    value_sql = {name: dimension_sql(name, "e.") for name in DIMENSIONS}
    groups = [_group_sql(k, "e.occurred_at", value_sql.get(k, "")) for k in spec.group_by]
    where = _filter_sql(spec.filters, params, value_sql)
    keys = ", ".join(f"m.g{k}" for k in range(len(groups)))
    if totals_tag is not None:
        part = f"CASE WHEN GROUPING({keys}) = 0 THEN {tag} ELSE {totals_tag} END"
        group_clause = f"GROUP BY GROUPING SETS (({keys}), ())"
    else:
        part = tag
        group_clause = f"GROUP BY {keys}" if groups else ""
    name = f"ev{tag}"
    ctes = [
        f"""{name}_m AS (
            SELECT {"".join(f"{g} AS g{k}, " for k, g in enumerate(groups))}
                e.user_id, e.session_id, e.event_name, e.engagement_time_msec, e.revenue
            FROM events e
            WHERE e.tenant_id = :tenant_id AND e.occurred_at >= :start AND e.occurred_at < :end
            {where}
        )""",
        f"""{name}_g AS (
            SELECT s.user_id, s.session_id
            FROM events s
            WHERE s.tenant_id = :tenant_id
              AND (s.user_id, s.session_id) IN (
                  SELECT DISTINCT user_id, session_id FROM {name}_m
                  WHERE user_id IS NOT NULL AND session_id IS NOT NULL)
            GROUP BY s.user_id, s.session_id
            HAVING coalesce(bool_or(s.session_engaged), false)
                OR coalesce(sum(s.engagement_time_msec), 0) >= {ENGAGED_MIN_MSEC}
                OR count(*) FILTER (WHERE s.event_name = '{PAGE_VIEW}') >= {ENGAGED_MIN_PAGEVIEWS}
                OR bool_or(s.event_name = ANY(:conversions))
        )""",
    ]
    select = f"""
        SELECT {part} AS part, {_group_columns(spec.group_by, width, types, "m.")}
            count(*)::bigint AS events,
            count(*) FILTER (WHERE m.event_name = '{PAGE_VIEW}')::bigint AS pageviews,
            count(*) FILTER (WHERE m.event_name = '{FIRST_VISIT}')::bigint AS new_users,
            count(*) FILTER (WHERE m.event_name = ANY(:conversions))::bigint AS conversions,
            coalesce(sum(m.engagement_time_msec), 0)::bigint AS engagement_msec,
            coalesce(sum(m.revenue), 0)::numeric AS revenue,
            count(DISTINCT m.user_id)::bigint AS users,
            count(DISTINCT (m.user_id, m.session_id))
                FILTER (WHERE m.user_id IS NOT NULL AND m.session_id IS NOT NULL)::bigint
                AS sessions,
            count(DISTINCT (m.user_id, m.session_id))
                FILTER (WHERE g.user_id IS NOT NULL)::bigint AS engaged_sessions,
            count(DISTINCT (m.user_id, m.session_id))
                FILTER (WHERE m.user_id IS NOT NULL AND m.session_id IS NOT NULL
                        AND m.event_name = ANY(:conversions))::bigint AS converting_sessions
            {_ROLLUP_NULLS}, NULL::bigint AS total_groups
        FROM {name}_m m
        LEFT JOIN {name}_g g ON g.user_id = m.user_id AND g.session_id = m.session_id
        {group_clause}
    """
    return _Part(ctes, select, params, "events")


def _rollup_sums(alias: str = "r") -> str:
    return "".join(f"coalesce(sum({alias}.{name}), 0)::bigint AS {name}, " for name in _SUMS) + (
        f"coalesce(sum({alias}.revenue), 0)::numeric AS revenue"
    )


def _rollup_sketches(spec: AggregateSpec) -> str:
    # A group of one rollup row (a day of a daily series, say) has its exact distinct
    # users and sessions in the row: no sketch to send, decode or merge for those.
    # Only the distinct counts the widget's metrics need travel at all.
    return (
        "count(*) AS rollup_rows, sum(r.users_count)::bigint AS users_exact,"
        " sum(r.sessions_count)::bigint AS sessions_exact"
        + "".join(
            (
                f", CASE WHEN {'count(*) > 1' if name in _EXACT_COLUMNS else 'true'}"
                f" THEN array_agg(r.{column}) FILTER (WHERE r.{column} IS NOT NULL) END"
                if name in spec.needs
                else ", NULL::bytea[]"
            )
            + f" AS {name}_hll"
            for name, column in _SKETCH_COLUMNS.items()
        )
    )


def _rollup_part(
    spec: AggregateSpec,
    plan: tuple[int, str | None],
    tag: str,
    width: int,
    types: Sequence[str],
    within: str | None,
) -> _Part:
    """Sums and sketch arrays from the rollups. A ranked part (``spec.top``) ranks the
    groups by an exact sum in SQL and fetches sketches for the winners only; ``within``
    names another part's winners that limit this part's groups."""
    grain, dim_name = plan
    params = _params(spec)
    params["grain"] = grain
    params["dim"] = DIMENSIONS[dim_name] if dim_name else TOTAL_DIMENSION
    value_sql = dict.fromkeys(DIMENSIONS, "r.value")
    groups = [_group_sql(k, "r.bucket", "r.value") for k in spec.group_by]
    where = (
        "r.tenant_id = :tenant_id AND r.grain = :grain AND r.dim = :dim"
        " AND r.bucket >= :start AND r.bucket < :end"
    ) + _filter_sql(spec.filters, params, value_sql)
    top = _ranked(spec, dim_name)
    if top is not None:
        params["top_n"] = top.n
        direction = "DESC" if top.descending else "ASC"
        ranked = f"rk{tag}"
        cte = f"""{ranked} AS (
            SELECT r.value AS g0, {_rollup_sums()},
                {RANKABLE[top.rank]} AS rank, count(*) OVER () AS total_groups
            FROM stats_rollups r WHERE {where}
            GROUP BY r.value
            ORDER BY rank {direction}, r.value ASC
            LIMIT :top_n
        )"""
        select = f"""
            SELECT {tag} AS part, {_group_columns(spec.group_by, width, types, "k.")}
                {", ".join(f"k.{name}" for name in (*_SUMS, "revenue"))}
                {_EXACT_DISTINCT_NULLS},
                s.rollup_rows, s.users_exact, s.sessions_exact,
                {", ".join(f"s.{name}_hll" for name in _SKETCH_COLUMNS)},
                k.total_groups
            FROM {ranked} k
            CROSS JOIN LATERAL (
                SELECT {_rollup_sketches(spec)} FROM stats_rollups r
                WHERE {where} AND r.value = k.g0
            ) s
        """
        return _Part([cte], select, params, "rollups")
    if within is not None:
        where += f" AND r.value IN (SELECT w.g0 FROM {within} w)"
    select_groups = "".join(f"{g} AS g{k}, " for k, g in enumerate(groups))
    padding = "".join(f"NULL::{types[k]} AS g{k}, " for k in range(len(groups), width))
    group_clause = f"GROUP BY {', '.join(f'g{k}' for k in range(len(groups)))}" if groups else ""
    select = f"""
        SELECT {tag} AS part, {select_groups}{padding} {_rollup_sums()}
            {_EXACT_DISTINCT_NULLS}, {_rollup_sketches(spec)}, NULL::bigint AS total_groups
        FROM stats_rollups r WHERE {where}
        {group_clause}
    """
    return _Part([], select, params, "rollups")


def _ranked(spec: AggregateSpec, dim_name: str | None) -> TopN | None:
    """The top-N cut of a part that ranks one plain dimension by an exact sum."""
    top = spec.top
    if top is None or top.rank not in RANKABLE or not dim_name or spec.group_by != (dim_name,):
        return None
    return top


def _totals_companion(specs: Sequence[AggregateSpec], i: int) -> int | None:
    """A later raw-events part holding the totals of part ``i``'s very scan, if any."""
    spec = specs[i]
    if not spec.group_by or rollup_plan(spec) is not None:
        return None
    for j in range(i + 1, len(specs)):
        other = specs[j]
        if other.group_by or rollup_plan(other) is not None:
            continue
        if replace(spec, group_by=(), top=None, needs=other.needs) == other:
            return j
    return None


def _column_types(specs: Sequence[AggregateSpec]) -> list[str]:
    types: list[str] = []
    for spec in specs:
        for k, key in enumerate(spec.group_by):
            kind = _group_type(key)
            if k == len(types):
                types.append(kind)
            elif types[k] != kind:
                raise ValueError("the parts of one statement group by keys of other types")
    return types


async def aggregate_all(
    session: AsyncSession,
    specs: Sequence[AggregateSpec],
    *,
    within: Mapping[int, int] | None = None,
) -> list[AggregateResult]:
    """Aggregate every spec in ONE statement, from rollups where they cover it.

    ``within`` maps a part to a ranked part (one with ``top``) on the same dimension:
    its groups are limited to the groups the ranked part returns (a comparison period
    needs figures only for the rows shown).
    """
    types = _column_types(specs)
    width = len(types)
    plans = [rollup_plan(spec) for spec in specs]
    parts: dict[int, _Part] = {}
    riding: set[int] = set()
    for i, spec in enumerate(specs):
        if i in riding:
            continue
        plan = plans[i]
        if plan is None:
            companion = _totals_companion(specs, i)
            if companion is not None and companion not in parts:
                riding.add(companion)
            else:
                companion = None
            tag = str(i)
            parts[i] = _events_part(
                spec, tag, str(companion) if companion is not None else None, width, types
            )
            continue
        ranked_by = (within or {}).get(i)
        limit_to = None
        if ranked_by is not None:
            other = specs[ranked_by]
            other_plan = plans[ranked_by]
            if (
                other_plan is not None
                and _ranked(other, other_plan[1]) is not None
                and plan == other_plan
                and spec.group_by == other.group_by
            ):
                limit_to = f"rk{ranked_by}"
        parts[i] = _rollup_part(spec, plan, str(i), width, types, limit_to)
    ctes: list[str] = []
    selects: list[str] = []
    params: dict[str, Any] = {}
    for i, part in sorted(parts.items()):
        prefix = f"p{i}_"
        for cte in part.ctes:
            sql, bound = _prefixed(cte, part.params, prefix)
            ctes.append(sql)
            params.update(bound)
        sql, bound = _prefixed(part.select, part.params, prefix)
        selects.append(f"({sql})")
        params.update(bound)
    statement = ("WITH " + ",\n".join(ctes) + "\n" if ctes else "") + "\nUNION ALL\n".join(selects)
    rows = (await session.execute(_statement(statement), params)).all()
    needs = [spec.needs for spec in specs]
    # Merging runs on the loop in short slices (threads would contend for the GIL).
    built = await in_slices(rows, lambda row: _build(row, width, needs))
    results = [AggregateResult({}, "rollups" if plan is not None else "events") for plan in plans]
    for part_index, key, agg, total_groups in built:
        result = results[part_index]
        result.groups[key[: len(specs[part_index].group_by)]] = agg
        if total_groups is not None:
            result.total_groups = int(total_groups)
    for spec, plan, result in zip(specs, plans, results, strict=True):
        if plan is None:
            continue
        if _ranked(spec, plan[1]) is not None:
            result.total_groups = result.total_groups or 0
        if not spec.group_by:
            total = result.groups.get(())
            if total is not None and total.events == 0:
                result.groups = {}
    return results


_ZERO = exact(0)


def _merged(blobs: Sequence[bytes] | None) -> DistinctCount:
    return merge_blobs(blobs) if blobs else _ZERO


def _build(
    row: Sequence[Any], width: int, needs: Sequence[frozenset[str]]
) -> tuple[int, GroupKey, Aggregates, int | None]:
    """One result row (columns in the order every part selects them) as aggregates."""
    part = row[0]
    (
        events,
        pageviews,
        new_users,
        conversions,
        engagement_msec,
        revenue,
        users,
        sessions,
        engaged,
        converting,
        rollup_rows,
        users_exact,
        sessions_exact,
        users_hll,
        sessions_hll,
        engaged_hll,
        converting_hll,
        total_groups,
    ) = row[1 + width :]
    if users is not None:  # raw events: exact
        distinct = (exact(users), exact(sessions), exact(engaged), exact(converting))
    else:
        # A group of one rollup row has its exact users and sessions in the row.
        one_row = rollup_rows == 1
        wanted = needs[part]
        distinct = (
            exact(int(users_exact)) if one_row and "users" in wanted else _merged(users_hll),
            exact(int(sessions_exact))
            if one_row and "sessions" in wanted
            else _merged(sessions_hll),
            _merged(engaged_hll),
            _merged(converting_hll),
        )
    agg = Aggregates(
        events=int(events),
        pageviews=int(pageviews),
        new_users=int(new_users),
        conversions=int(conversions),
        engagement_msec=int(engagement_msec),
        revenue=Decimal(revenue),
        users=distinct[0],
        sessions=distinct[1],
        engaged_sessions=distinct[2],
        converting_sessions=distinct[3],
    )
    return part, tuple(row[1 : 1 + width]), agg, total_groups


async def aggregate(session: AsyncSession, spec: AggregateSpec) -> AggregateResult:
    """Aggregate the tenant's events for ``spec`` from rollups when possible."""
    return (await aggregate_all(session, [spec]))[0]
