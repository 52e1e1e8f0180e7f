"""The SQL of one widget's statement: one *part* per aggregation (groups or totals, of
the current or the comparison period), from rollups or raw events, all with the same
columns so :func:`app.modules.events.query.aggregate_all` can send them as one statement.

Every identifier comes from the allow-lists in :mod:`app.modules.events.spec`; every
value is a bound parameter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import TextClause, text

from app.modules.events.definitions import (
    DIMENSIONS,
    ENGAGED_MIN_MSEC,
    ENGAGED_MIN_PAGEVIEWS,
    FIRST_VISIT,
    GRAIN_MONTH,
    PAGE_VIEW,
    TOTAL_DIMENSION,
)
from app.modules.events.spec import (
    DISTINCT,
    EXACT_COLUMNS,
    RANKABLE,
    SKETCH_COLUMNS,
    AggregateSpec,
    Filter,
    TimeGrain,
    TopN,
    coarse_grains,
    dimension_sql,
    rollup_plan,
    time_grain,
)

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


def prefixed(sql: str, params: dict[str, Any], prefix: str) -> tuple[str, dict[str, Any]]:
    """Give one part's bind parameters names of their own within a shared statement."""
    return _prefixed_sql(sql, prefix), {f"{prefix}{k}": v for k, v in params.items()}


@lru_cache(maxsize=512)
def statement_text(sql: str) -> TextClause:
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
    + "".join(f", NULL::bytea[] AS {name}_hll" for name in SKETCH_COLUMNS)
)


@dataclass
class Part:
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


def events_part(
    spec: AggregateSpec, tag: str, totals_tag: str | None, width: int, types: Sequence[str]
) -> Part:
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
    return Part(ctes, select, params, "events")


def _rollup_sums(alias: str = "r") -> str:
    return "".join(f"coalesce(sum({alias}.{name}), 0)::bigint AS {name}, " for name in _SUMS) + (
        f"coalesce(sum({alias}.revenue), 0)::numeric AS revenue"
    )


def _rollup_sketches(spec: AggregateSpec) -> str:
    # A group of one rollup row (a day of a daily series, say) has its exact distinct
    # users and sessions in the row: no sketch to send, decode or merge for those.
    # Only the distinct counts the widget's metrics need travel at all.
    # Rows counted in day rows: a week or month row stands for the day rows it merges,
    # so a group of one day row is exact whichever rows were read.
    rows = "sum(coalesce(r.day_rows, 1))"
    return (
        f"{rows} AS rollup_rows, sum(r.users_count)::bigint AS users_exact,"
        " sum(r.sessions_count)::bigint AS sessions_exact"
        + "".join(
            (
                f", CASE WHEN {f'{rows} > 1' if name in EXACT_COLUMNS else 'true'}"
                f" THEN array_agg(r.{column}) FILTER (WHERE r.{column} IS NOT NULL) END"
                if name in spec.needs
                else ", NULL::bytea[]"
            )
            + f" AS {name}_hll"
            for name, column in SKETCH_COLUMNS.items()
        )
    )


def rollup_part(
    spec: AggregateSpec,
    plan: tuple[int, str | None],
    tag: str,
    width: int,
    types: Sequence[str],
    within: str | None,
    shared: dict[tuple[Any, ...], str] | None = None,
) -> Part:
    """Sums and sketch arrays from the rollups. A ranked part (``spec.top``) ranks the
    groups by an exact sum in SQL and fetches sketches for the winners only; ``within``
    names another part's winners that limit this part's groups; ``shared``: see
    :func:`rollup_source`."""
    grain, dim_name = plan
    params = _params(spec)
    params["grain"] = grain
    params["dim"] = DIMENSIONS[dim_name] if dim_name else TOTAL_DIMENSION
    value_sql = dict.fromkeys(DIMENSIONS, "r.value")
    groups = [_group_sql(k, "r.bucket", "r.value") for k in spec.group_by]
    ctes, source, where = rollup_source(spec, plan, tag, shared)
    where += _filter_sql(spec.filters, params, value_sql)
    top = ranked_top(spec, dim_name)
    if top is not None:
        params["top_n"] = top.n
        direction = "DESC" if top.descending else "ASC"
        ranked = f"rk{tag}"
        cte = f"""{ranked} AS (
            SELECT r.value AS g0, {_rollup_sums()},
                {RANKABLE[top.rank]} AS rank, count(*) OVER () AS total_groups
            FROM {source} r WHERE {where}
            GROUP BY r.value
            ORDER BY rank {direction}, r.value ASC
            LIMIT :top_n
        )"""
        select = f"""
            SELECT {tag} AS part, {_group_columns(spec.group_by, width, types, "k.")}
                {", ".join(f"k.{name}" for name in (*_SUMS, "revenue"))}
                {_EXACT_DISTINCT_NULLS},
                s.rollup_rows, s.users_exact, s.sessions_exact,
                {", ".join(f"s.{name}_hll" for name in SKETCH_COLUMNS)},
                k.total_groups
            FROM {ranked} k
            CROSS JOIN LATERAL (
                SELECT {_rollup_sketches(spec)} FROM {source} r
                WHERE {where} AND r.value = k.g0
            ) s
        """
        return Part([*ctes, cte], select, params, "rollups")
    if within is not None:
        where += f" AND r.value IN (SELECT w.g0 FROM {within} w)"
    select_groups = "".join(f"{g} AS g{k}, " for k, g in enumerate(groups))
    padding = "".join(f"NULL::{types[k]} AS g{k}, " for k in range(len(groups), width))
    group_clause = f"GROUP BY {', '.join(f'g{k}' for k in range(len(groups)))}" if groups else ""
    select = f"""
        SELECT {tag} AS part, {select_groups}{padding} {_rollup_sums()}
            {_EXACT_DISTINCT_NULLS}, {_rollup_sketches(spec)}, NULL::bigint AS total_groups
        FROM {source} r WHERE {where}
        {group_clause}
    """
    return Part(ctes, select, params, "rollups")


_DAY_ROWS = (
    "r.tenant_id = :tenant_id AND r.grain = :grain AND r.dim = :dim"
    " AND r.bucket >= :start AND r.bucket < :end"
)


def rollup_source(
    spec: AggregateSpec,
    plan: tuple[int, str | None],
    tag: str,
    shared: dict[tuple[Any, ...], str] | None = None,
) -> tuple[list[str], str, str]:
    """The rollup rows a part reads: ``(ctes, source, where)`` for ``FROM {source} r
    WHERE {where}``.

    Without coarse grains, the plan's grain rows in ``[start, end)``. With them (a long
    range over day rows): a month row for each whole local month in the range whose
    total row exists, a week row for each whole week with one that overlaps none of
    those months, and day rows for every day outside those (edges, periods not built
    yet). Still part of the widget's one statement.

    ``shared`` maps the periods' key to the tag of the part that already defines them in
    the statement (a widget's groups and totals cover the same range): that part's CTEs
    are read instead of planned again.
    """
    grains = coarse_grains(spec, plan)
    if not grains:
        return [], "stats_rollups", _DAY_ROWS
    key = (spec.tenant_id, spec.start, spec.end, spec.timezone, grains)
    owner = tag if shared is None else shared.setdefault(key, tag)
    built, pieces, gaps = f"cb{owner}", f"cp{owner}", f"cg{owner}"
    ctes = (
        []
        if owner != tag
        else [
            f"""{built} AS (
            SELECT c.grain, c.bucket AS lo, ((c.bucket AT TIME ZONE :tz)
                + CASE c.grain WHEN {GRAIN_MONTH} THEN interval '1 month'
                  ELSE interval '7 days' END) AT TIME ZONE :tz AS hi
            FROM stats_rollups c
            WHERE c.tenant_id = :tenant_id AND c.grain IN ({", ".join(map(str, grains))})
              AND c.dim = {TOTAL_DIMENSION} AND c.value = ''
              AND c.bucket >= :start AND c.bucket < :end
        )""",
            f"""{pieces} AS MATERIALIZED (
            SELECT b.grain, b.lo, b.hi FROM {built} b
            WHERE b.hi <= :end AND (b.grain = {GRAIN_MONTH} OR NOT EXISTS (
                SELECT 1 FROM {built} m
                WHERE m.grain = {GRAIN_MONTH} AND m.hi <= :end AND m.lo < b.hi AND b.lo < m.hi))
        )""",
            # The stretches of [start, end) no piece covers: read from day rows, so a range
            # scan of the index visits only them (not every day of the range, filtered).
            f"""{gaps} AS MATERIALIZED (
            SELECT g.lo, g.hi FROM (
                SELECT coalesce(lag(p.hi) OVER (ORDER BY p.lo), CAST(:start AS timestamptz))
                    AS lo, p.lo AS hi
                FROM {pieces} p
                UNION ALL
                SELECT coalesce(max(p.hi), CAST(:start AS timestamptz)),
                    CAST(:end AS timestamptz)
                FROM {pieces} p
            ) g WHERE g.lo < g.hi
        )""",
        ]
    )
    source = f"""(
        SELECT r.* FROM {gaps} g
        JOIN stats_rollups r ON r.tenant_id = :tenant_id AND r.grain = :grain
            AND r.dim = :dim AND r.bucket >= g.lo AND r.bucket < g.hi
        UNION ALL
        SELECT r.* FROM {pieces} p
        JOIN stats_rollups r ON r.tenant_id = :tenant_id AND r.grain = p.grain
            AND r.dim = :dim AND r.bucket = p.lo
    )"""
    return ctes, source, "r.tenant_id = :tenant_id"


def ranked_top(spec: AggregateSpec, dim_name: str | None) -> TopN | None:
    """The top-N cut of a part that ranks one plain dimension by an exact sum."""
    top = spec.top
    if top is None or top.rank not in RANKABLE or not dim_name or spec.group_by != (dim_name,):
        return None
    return top


def totals_companion(specs: Sequence[AggregateSpec], i: int) -> int | None:
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


def column_types(specs: Sequence[AggregateSpec]) -> list[str]:
    types: list[str] = []
    for spec in specs:
        for k, key in enumerate(spec.group_by):
            kind = _group_type(key)
            if k == len(types):
                types.append(kind)
            elif types[k] != kind:
                raise ValueError("the parts of one statement group by keys of other types")
    return types
