"""A brute-force reference for the stats API: one plain SQL query over raw events,
written independently of the engine (local dates by AT TIME ZONE, labels built in
SQL, session facts by a plain GROUP BY over all of the tenant's events)."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

DIMENSION_COLUMNS = (
    "event_name",
    "page_path",
    "country",
    "city",
    "device_category",
    "os",
    "browser",
    "source",
    "medium",
    "campaign",
)

_OFFSET = """
    (SELECT CASE WHEN m < 0 THEN '-' ELSE '+' END
            || lpad((abs(m) / 60)::text, 2, '0') || ':' || lpad((abs(m) % 60)::text, 2, '0')
     FROM (SELECT (extract(epoch FROM (e.occurred_at AT TIME ZONE :tz)
                   - (e.occurred_at AT TIME ZONE 'UTC')) / 60)::int AS m) o)
"""


def _label(dimension: str) -> str:
    if dimension == "time:hour":
        return (
            "to_char(date_trunc('hour', e.occurred_at AT TIME ZONE :tz),"
            " 'YYYY-MM-DD\"T\"HH24:MI:SS') || " + _OFFSET
        )
    if dimension == "time:day":
        return "((e.occurred_at AT TIME ZONE :tz)::date)::text"
    if dimension in ("time:week", "time:month"):
        grain = dimension.removeprefix("time:")
        return f"(date_trunc('{grain}', e.occurred_at AT TIME ZONE :tz)::date)::text"
    assert dimension in DIMENSION_COLUMNS
    return f"coalesce(nullif(e.{dimension}, ''), '(not set)')"


async def brute_force(
    session: AsyncSession,
    tenant_id: str,
    *,
    first: date,
    last: date,
    timezone: str,
    dimensions: list[str],
    filters: list[list[Any]],
    conversions: list[str],
) -> dict[tuple[str, ...], dict[str, Any]]:
    """Exact base aggregates per group of dimension labels."""
    params: dict[str, Any] = {
        "tenant_id": tenant_id,
        "first": first,
        "last": last,
        "tz": timezone,
        "conversions": conversions,
    }
    where = []
    for i, (operator, dimension, values) in enumerate(filters):
        column = _label(dimension)
        params[f"v{i}"] = values if isinstance(values, list) else [values]
        if operator in ("is", "is_not"):
            clause = f"{column} = ANY(:v{i})"
        else:
            clause = (
                f"EXISTS (SELECT 1 FROM unnest(CAST(:v{i} AS text[])) x"
                f" WHERE position(lower(x) IN lower({column})) > 0)"
            )
        where.append(f"NOT ({clause})" if operator in ("is_not", "not_contains") else clause)
    labels = [_label(d) for d in dimensions]
    select = "".join(f"{label} AS d{i}, " for i, label in enumerate(labels))
    group = ("GROUP BY " + ", ".join(f"d{i}" for i in range(len(labels)))) if labels else ""
    sql = f"""
        WITH sessions AS (
            SELECT user_id, session_id,
                   bool_or(coalesce(session_engaged, false))
                   OR sum(coalesce(engagement_time_msec, 0)) >= 10000
                   OR sum(CASE WHEN event_name = 'page_view' THEN 1 ELSE 0 END) >= 2
                   OR bool_or(event_name = ANY(:conversions)) AS engaged
            FROM events WHERE tenant_id = :tenant_id
              AND user_id IS NOT NULL AND session_id IS NOT NULL
            GROUP BY user_id, session_id
        )
        SELECT {select}
            count(*) AS events,
            sum(CASE WHEN e.event_name = 'page_view' THEN 1 ELSE 0 END) AS pageviews,
            sum(CASE WHEN e.event_name = 'first_visit' THEN 1 ELSE 0 END) AS new_users,
            sum(CASE WHEN e.event_name = ANY(:conversions) THEN 1 ELSE 0 END) AS conversions,
            sum(coalesce(e.engagement_time_msec, 0)) AS engagement_msec,
            sum(coalesce(e.revenue, 0)) AS revenue,
            count(DISTINCT e.user_id) AS users,
            count(DISTINCT e.user_id || '|' || e.session_id) AS sessions,
            count(DISTINCT CASE WHEN s.engaged THEN e.user_id || '|' || e.session_id END)
                AS engaged_sessions,
            count(DISTINCT CASE WHEN e.event_name = ANY(:conversions)
                                THEN e.user_id || '|' || e.session_id END) AS converting_sessions
        FROM events e
        LEFT JOIN sessions s ON s.user_id = e.user_id AND s.session_id = e.session_id
        WHERE e.tenant_id = :tenant_id
          AND (e.occurred_at AT TIME ZONE :tz)::date BETWEEN :first AND :last
          {"".join(" AND " + w for w in where)}
        {group}
    """
    rows = (await session.execute(text(sql), params)).mappings().all()
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[f"d{i}"] for i in range(len(labels)))
        out[key] = {k: float(v) for k, v in row.items() if not k.startswith("d")}
    return out


def derive(agg: dict[str, Any], metric: str) -> Any:
    """The API's metric definitions, from brute-force aggregates."""
    sessions = agg["sessions"]
    if metric in (
        "events",
        "pageviews",
        "new_users",
        "conversions",
        "users",
        "sessions",
        "engaged_sessions",
    ):
        return int(agg[metric])
    if metric == "revenue":
        return float(agg["revenue"])
    if not sessions:
        return None
    if metric == "bounce_rate":
        return 1 - agg["engaged_sessions"] / sessions
    if metric == "avg_session_duration":
        return agg["engagement_msec"] / 1000 / sessions
    if metric == "views_per_session":
        return agg["pageviews"] / sessions
    if metric == "conversion_rate":
        return agg["converting_sessions"] / sessions
    raise AssertionError(metric)


EMPTY = {
    "events": 0,
    "pageviews": 0,
    "new_users": 0,
    "conversions": 0,
    "engagement_msec": 0,
    "revenue": 0,
    "users": 0,
    "sessions": 0,
    "engaged_sessions": 0,
    "converting_sessions": 0,
}
