"""Rollups of each tenant's events: the rebuild from the events table.

Loads add their rows to the rollups (:mod:`app.modules.events.increments`); this module
rebuilds whole days instead, for a tenant's first load and after a change of its
timezone or conversion events. The tables are in :mod:`app.modules.events.models`, the
sketch maths in :mod:`app.modules.events.sketches`, the dimensions, grains and the
engagement rule in :mod:`app.modules.events.definitions`.

Two grains of ``stats_rollups`` are built from events (week and month rows are derived
from the day rows, :mod:`app.modules.events.grains`):

* ``GRAIN_DAY``: one row per (tenant, local day in the tenant's timezone, dimension,
  value), for the "all events" total (dimension 0) and each of the ten dashboard
  dimensions. This is what summaries, daily/weekly/monthly series and breakdowns in
  the tenant's own timezone read: 30 rows per value for 30 days.
* ``GRAIN_HOUR``: one row per (tenant, UTC hour) for the total only. It serves hourly
  series and any other timezone whose offset is a whole number of hours, across
  daylight-saving changes, because a local day or hour there is a union of UTC hours.

Each row holds exact additive sums, exact distinct users/sessions of that bucket (used
to rank breakdown candidates) and four HyperLogLog sketches (Apache DataSketches,
lg_k=12, HLL_4) of the distinct users, sessions, engaged sessions and converting
sessions. Sums add up over any range; sketches merge into distinct counts whose
relative error is bounded (see :data:`app.modules.events.sketches.RELATIVE_ERROR`).

Session-level facts are global to the session: a session is engaged if *any* of its
events, on any day, makes it so. A late event can therefore change an older day; the
refresh widens the days it rebuilds to every day on which a touched session has events.
``stats_rollup_state`` remembers the timezone and conversion events the rows were built
with; when the tenant changes either, the engine stops using the affected rows (day rows
for a timezone, all rows for conversion events) and the next refresh rebuilds them.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import structlog
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import copy_rows_through_staging
from app.core.workers import RunInWorker, run_inline
from app.modules.events.definitions import (
    DIMENSION_NAMES,
    FIRST_VISIT,
    GRAIN_DAY,
    GRAIN_HOUR,
    PAGE_VIEW,
)
from app.modules.events.grains import drop_coarse
from app.modules.events.increments import rebuild_sessions
from app.modules.events.models import ROLLUP_COLUMNS
from app.modules.events.sketches import Sketches, build_group_sketches
from app.modules.events.state import rollup_state, sessions_built

log = structlog.get_logger("app.events.rollups")

ROLLUP_DIMENSIONS = DIMENSION_NAMES
# How many UTC days one refresh statement aggregates (bounds the server's work per
# statement), and how many aggregated rows are fetched at a time.
_DAYS_PER_BATCH = 7
_STREAM_ROWS = 16


# --- refresh ----------------------------------------------------------------------------


_DAY_DIMENSIONS = ", ".join(
    f"({i}, coalesce(nullif(x.{name}, ''), '(not set)'))"
    for i, name in enumerate(ROLLUP_DIMENSIONS, start=1)
)

# The sessions whose events fall in the refreshed window, and every UTC day on which
# those sessions have events: a late event can change an older day's engaged sessions.
#
# Session lookups go session by session through ix_events_tenant_session (LATERAL, with
# OFFSET 0 so the planner cannot flatten it back into a join of its choosing). Left to
# itself, for a tenant the statistics have not seen yet (its first import) the planner
# expects one row and nested-loops every event against every event of the tenant.
_TOUCHED_SESSIONS = """
    SELECT DISTINCT e.user_id, e.session_id FROM events e
    WHERE e.tenant_id = :tenant_id AND e.occurred_at >= :lo AND e.occurred_at < :hi
      AND (e.occurred_at AT TIME ZONE 'UTC')::date = ANY(:days)
      AND e.user_id IS NOT NULL AND e.session_id IS NOT NULL
"""
_SESSION_DAYS = sql_text(
    f"""
    SELECT DISTINCT (s.occurred_at AT TIME ZONE 'UTC')::date AS day
    FROM ({_TOUCHED_SESSIONS}) t
    CROSS JOIN LATERAL (
        SELECT s.occurred_at FROM events s
        WHERE s.tenant_id = :tenant_id AND s.user_id = t.user_id AND s.session_id = t.session_id
        OFFSET 0
    ) s
    """
)

_DELETE = sql_text(
    "DELETE FROM stats_rollups WHERE tenant_id = :tenant_id AND grain = :grain"
    " AND bucket >= :lo AND bucket < :hi"
)


_EVENT_COLUMNS = ", ".join(
    f"e.{c}"
    for c in (
        "occurred_at",
        "user_id",
        "session_id",
        "event_name",
        "engagement_time_msec",
        "revenue",
        *ROLLUP_DIMENSIONS[1:],
    )
)


def _aggregate_sql(grain: int) -> Any:
    if grain == GRAIN_HOUR:
        bucket = "date_trunc('hour', ev.occurred_at, 'UTC')"
        dimensions = "(VALUES (0, ''))"
    else:
        bucket = "((ev.occurred_at AT TIME ZONE :tz)::date)::timestamp AT TIME ZONE :tz"
        dimensions = f"(VALUES (0, ''), {_DAY_DIMENSIONS})"
    return sql_text(
        f"""
        WITH ev AS (SELECT * FROM pulse_rollup_ev),
        engaged AS (
            -- Whether a session is engaged is a fact of all its events, kept per session
            -- in stats_sessions (rebuilt before this when it is not current, see
            -- refresh_rollups). Session by session through its key (see _SESSION_DAYS).
            SELECT t.user_id, t.session_id
            FROM (SELECT DISTINCT user_id, session_id FROM ev
                  WHERE user_id IS NOT NULL AND session_id IS NOT NULL) t
            CROSS JOIN LATERAL (
                SELECT s.engaged FROM stats_sessions s
                WHERE s.tenant_id = :tenant_id
                  AND s.user_id = t.user_id AND s.session_id = t.session_id
                OFFSET 0
            ) a
            WHERE a.engaged
        ),
        x AS MATERIALIZED (
            -- Hashes and flags once per event, before the fan-out to 11 dimensions.
            SELECT ev.*,
                {bucket} AS bucket,
                CASE WHEN ev.user_id IS NOT NULL THEN hashtextextended(ev.user_id, 0) END AS uh,
                CASE WHEN ev.user_id IS NOT NULL AND ev.session_id IS NOT NULL
                     THEN hashtextextended(ev.user_id || chr(31) || ev.session_id, 0) END AS sh,
                g.user_id IS NOT NULL AS is_engaged,
                ev.event_name = ANY(:conversions) AS is_conversion
            FROM ev
            LEFT JOIN engaged g ON g.user_id = ev.user_id AND g.session_id = ev.session_id
        ),
        per_session AS (
            -- First per session (and user) within each group: the arrays below then
            -- carry a hash per session, not per event (several times fewer to send,
            -- decode and sketch). The sums add up again in the outer aggregate.
            SELECT x.bucket, d.dim, d.value, x.uh, x.sh,
                count(*) AS events,
                count(*) FILTER (WHERE x.event_name = '{PAGE_VIEW}') AS pageviews,
                count(*) FILTER (WHERE x.event_name = '{FIRST_VISIT}') AS new_users,
                count(*) FILTER (WHERE x.is_conversion) AS conversions,
                sum(x.engagement_time_msec) AS engagement_msec,
                sum(x.revenue) AS revenue,
                bool_or(x.is_engaged) AS is_engaged,
                bool_or(x.is_conversion) AS converted
            FROM x
            CROSS JOIN LATERAL {dimensions} AS d(dim, value)
            GROUP BY x.bucket, d.dim, d.value, x.uh, x.sh
        )
        SELECT p.bucket, p.dim, p.value,
            sum(p.events)::bigint AS events,
            sum(p.pageviews)::bigint AS pageviews,
            sum(p.new_users)::bigint AS new_users,
            sum(p.conversions)::bigint AS conversions,
            coalesce(sum(p.engagement_msec), 0)::bigint AS engagement_msec,
            coalesce(sum(p.revenue), 0) AS revenue,
            -- Hashes as big-endian int8s in one bytea each: decoded and sketched in a
            -- worker process, not as Python ints on the loop.
            string_agg(int8send(p.uh), ''::bytea) FILTER (WHERE p.uh IS NOT NULL) AS users,
            string_agg(int8send(p.sh), ''::bytea) FILTER (WHERE p.sh IS NOT NULL) AS sessions,
            string_agg(int8send(p.sh), ''::bytea)
                FILTER (WHERE p.sh IS NOT NULL AND p.is_engaged) AS engaged,
            string_agg(int8send(p.sh), ''::bytea)
                FILTER (WHERE p.sh IS NOT NULL AND p.converted) AS converting
        FROM per_session p
        GROUP BY p.bucket, p.dim, p.value
        """
    )


# The window's events go to an analysed temporary table first. Freshly loaded rows have
# no statistics yet, and with a one-row estimate the planner nested-loops the engaged
# sessions against every event: quadratic (a 50k-row batch ran for minutes instead of
# 0.3 s). ANALYZE on a temporary table is cheap and takes no lock others wait for.
_EV_DROP = sql_text("DROP TABLE IF EXISTS pg_temp.pulse_rollup_ev")
_EV_FILL = sql_text(
    f"CREATE TEMPORARY TABLE pulse_rollup_ev ON COMMIT DROP AS SELECT {_EVENT_COLUMNS}"
    " FROM events e"
    " WHERE e.tenant_id = :tenant_id AND e.occurred_at >= :lo AND e.occurred_at < :hi"
)
_EV_ANALYZE = sql_text("ANALYZE pg_temp.pulse_rollup_ev")
_SORT_OFF = sql_text("SELECT set_config('enable_sort', 'off', true)")
_SORT_ON = sql_text("SELECT set_config('enable_sort', 'on', true)")
# An explicit cursor rather than the driver's portal: CLOSE releases the temporary
# table, which an unclosed portal keeps in use until the transaction ends.
_DECLARE = {
    grain: sql_text(f"DECLARE pulse_rollup_cur NO SCROLL CURSOR FOR {_aggregate_sql(grain).text}")
    for grain in (GRAIN_HOUR, GRAIN_DAY)
}
_FETCH = sql_text(f"FETCH {_STREAM_ROWS} FROM pulse_rollup_cur")
_CLOSE = sql_text("CLOSE pulse_rollup_cur")


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _batches(days: Collection[date]) -> list[tuple[date, date]]:
    """Sorted days grouped into runs of consecutive days, each at most a batch long."""
    runs: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if runs and runs[-1][1] == day and (day - runs[-1][0]).days < _DAYS_PER_BATCH:
            runs[-1] = (runs[-1][0], day + timedelta(days=1))
        else:
            runs.append((day, day + timedelta(days=1)))
    return runs


def _rollup_record(tenant_id: str, grain: int, row: Any, built: Sketches) -> tuple[Any, ...]:
    return (
        tenant_id,
        grain,
        row.dim,
        row.bucket,
        row.value,
        row.events,
        row.pageviews,
        row.new_users,
        row.conversions,
        int(row.engagement_msec),
        row.revenue,
        *built,
    )


async def _session_days(session: AsyncSession, tenant_id: str, days: Collection[date]) -> set[date]:
    lo, hi = _day_start(min(days)), _day_start(max(days) + timedelta(days=1))
    result = await session.execute(
        _SESSION_DAYS, {"tenant_id": tenant_id, "lo": lo, "hi": hi, "days": sorted(days)}
    )
    return {row.day for row in result}


async def _all_event_days(session: AsyncSession, tenant_id: str) -> set[date]:
    result = await session.execute(
        sql_text(
            "SELECT DISTINCT (occurred_at AT TIME ZONE 'UTC')::date AS day"
            " FROM events WHERE tenant_id = :tenant_id"
        ),
        {"tenant_id": tenant_id},
    )
    return {row.day for row in result}


async def _local_days(session: AsyncSession, utc_days: Collection[date], zone: str) -> set[date]:
    """The local days (in ``zone``) that the given UTC days overlap."""
    result = await session.execute(
        sql_text(
            "SELECT DISTINCT (t AT TIME ZONE :tz)::date AS day"
            " FROM unnest(CAST(:days AS date[])) d,"
            " LATERAL (VALUES (d::timestamp AT TIME ZONE 'UTC'),"
            " ((d + 1)::timestamp AT TIME ZONE 'UTC' - interval '1 microsecond')) AS v(t)"
        ),
        {"days": sorted(utc_days), "tz": zone},
    )
    return {row.day for row in result}


async def _rebuild_grain(
    session: AsyncSession,
    tenant_id: str,
    grain: int,
    ranges: list[tuple[date, date]],
    params: dict[str, Any],
    run: RunInWorker,
) -> int:
    written = 0
    for lo_day, hi_day in ranges:
        if grain == GRAIN_HOUR:
            bounds = {"lo": _day_start(lo_day), "hi": _day_start(hi_day)}
        else:
            bounds = dict(
                (
                    await session.execute(
                        sql_text(
                            "SELECT CAST(:a AS date)::timestamp AT TIME ZONE :tz AS lo,"
                            " CAST(:b AS date)::timestamp AT TIME ZONE :tz AS hi"
                        ),
                        {"a": lo_day, "b": hi_day, "tz": params["tz"]},
                    )
                )
                .one()
                ._mapping
            )
        values = {**params, **bounds, "grain": grain}
        await session.execute(_DELETE, values)
        # Few groups from many fanned-out rows: hashing beats the sort the planner
        # picks (about 2x measured); the setting is put back for the caller's transaction.
        # (Not in a `finally`: after a failed statement the transaction is aborted, the
        # reset would fail too and hide the real error; the rollback undoes SET LOCAL.)
        await session.execute(_EV_DROP)
        await session.execute(_EV_FILL, values)
        await session.execute(_EV_ANALYZE)
        await session.execute(_SORT_OFF)
        # Streamed: a row carries the hashes of every event in its bucket (a whole day's
        # for the totals), so holding all rows at once would take memory in proportion
        # to the window. The finished records are small (four sketches of a few KB).
        records: list[tuple[Any, ...]] = []
        await session.execute(_DECLARE[grain], values)
        while part := (await session.execute(_FETCH)).all():
            built = await run(
                build_group_sketches,
                [(r.users, r.sessions, r.engaged, r.converting) for r in part],
            )
            records.extend(
                _rollup_record(tenant_id, grain, r, b) for r, b in zip(part, built, strict=True)
            )
        await session.execute(_CLOSE)
        await session.execute(_SORT_ON)
        written += await copy_rows_through_staging(
            session, "stats_rollups", ROLLUP_COLUMNS, records
        )
    return written


async def refresh_rollups(
    session: AsyncSession,
    tenant_id: str,
    days: Collection[date],
    *,
    run: RunInWorker | None = None,
) -> None:
    """Rebuild the tenant's rollups for the given UTC days (and the days of any session
    with events on them). Runs in the caller's transaction and only flushes."""
    if not days:
        return
    from app.modules.tenants import get_tenant_config

    await drop_coarse(session, tenant_id)  # week/month rows: rebuilt from new day rows later

    config = await get_tenant_config(session, tenant_id)
    conversions = sorted(config.conversion_events)
    built = await rollup_state(session, tenant_id)
    utc_days = set(days) | await _session_days(session, tenant_id, days)
    if (
        built is None
        or tuple(conversions) != built.conversion_events
        or not await sessions_built(session, tenant_id)
    ):
        # First build, other conversion events, or rollups from before the session
        # facts existed: every row is rebuilt, with the session facts.
        await session.execute(
            sql_text("DELETE FROM stats_rollups WHERE tenant_id = :tenant_id"),
            {"tenant_id": tenant_id},
        )
        await rebuild_sessions(session, tenant_id, conversions)
        utc_days |= await _all_event_days(session, tenant_id)
    else:
        # The session facts the aggregate reads (engaged sessions) must include this
        # transaction's rows, which only the incremental path adds: rebuilt here too.
        await rebuild_sessions(session, tenant_id, conversions)
    if built is not None and built.timezone != config.timezone:
        # The tenant moved timezone: every local day is rebuilt.
        await session.execute(
            sql_text("DELETE FROM stats_rollups WHERE tenant_id = :tenant_id AND grain = :g"),
            {"tenant_id": tenant_id, "g": GRAIN_DAY},
        )
        utc_days |= await _all_event_days(session, tenant_id)
    local_days = await _local_days(session, utc_days, config.timezone)
    params = {"tenant_id": tenant_id, "conversions": conversions, "tz": config.timezone}
    work = run or run_inline
    written = await _rebuild_grain(session, tenant_id, GRAIN_HOUR, _batches(utc_days), params, work)
    written += await _rebuild_grain(
        session, tenant_id, GRAIN_DAY, _batches(local_days), params, work
    )
    await session.execute(
        sql_text(
            "INSERT INTO stats_rollup_state"
            " (tenant_id, timezone, conversion_events, built_at, sessions_built)"
            " VALUES (:tenant_id, :tz, :conversions, now(), true)"
            " ON CONFLICT (tenant_id) DO UPDATE SET timezone = EXCLUDED.timezone,"
            " conversion_events = EXCLUDED.conversion_events, built_at = EXCLUDED.built_at,"
            " sessions_built = true"
        ),
        {"tenant_id": tenant_id, "tz": config.timezone, "conversions": conversions},
    )
    log.debug(
        "rollups.refreshed",
        tenant_id=tenant_id,
        utc_days=len(utc_days),
        requested_days=len(days),
        rows=written,
    )


async def rebuild_rollups(session: AsyncSession, tenant_id: str) -> None:
    """Rebuild every rollup of a tenant, e.g. after its conversion events changed."""
    days = await _all_event_days(session, tenant_id)
    await session.execute(
        sql_text("DELETE FROM stats_rollups WHERE tenant_id = :tenant_id"),
        {"tenant_id": tenant_id},
    )
    await session.execute(
        sql_text("DELETE FROM stats_rollup_state WHERE tenant_id = :tenant_id"),
        {"tenant_id": tenant_id},
    )
    await refresh_rollups(session, tenant_id, days)
