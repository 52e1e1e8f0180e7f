"""Rollups updated per row loaded: a load's rows are added to the rows they belong to.

:func:`refresh_rollups` rebuilds whole days from the events table; a transaction that
loads into a day already holding N events pays for N again, so a backfill committed
batch by batch costs the square of a day's size. :func:`apply_loaded` instead reads
only what this transaction inserted (``pulse_loaded``, filled by the merge) and adds it:

* **sums** (events, page views, ...) per (bucket, dimension, value), computed by SQL
  over the loaded rows and added to the stored row (``ON CONFLICT DO UPDATE SET
  x = x + excluded.x``);
* **sketches**: the loaded rows' hashes are merged into the stored HLL sketch (a union,
  in a worker process), never rebuilt from the day's events;
* **exact distinct counts** (``users_count``, ``sessions_count``, used to rank
  breakdowns and for single-row answers): a loaded user counts in a group only if none
  of that user's *earlier* events is in the group. The earlier events are looked up user
  by user (session by session) through ``ix_events_tenant_session``, within the loaded
  rows' time span: the cost follows the loaded users' own events, not the day's;
* **engaged sessions**, a fact of the whole session: ``stats_sessions`` keeps each
  session's additive facts. A load adds its rows' facts; a session that turns engaged
  (it never turns back as events are added) has its hash added to the engaged sketch of
  every group its earlier events are in, found through the session index.

Everything runs in the load's transaction, under the tenant's load lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasketches  # type: ignore[import-untyped]
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import copy_rows
from app.core.workers import RunInWorker, run_inline
from app.modules.events.definitions import (
    DIMENSION_NAMES,
    ENGAGED_MIN_MSEC,
    ENGAGED_MIN_PAGEVIEWS,
    FIRST_VISIT,
    GRAIN_DAY,
    GRAIN_HOUR,
    PAGE_VIEW,
)
from app.modules.events.grains import invalidate_coarse
from app.modules.events.models import ROLLUP_COLUMNS
from app.modules.events.sketches import HLL_TYPE, LG_K, hash_values

LOADED_TABLE = "pulse_loaded"
CREATE_LOADED = text(
    f"CREATE TEMP TABLE IF NOT EXISTS {LOADED_TABLE}"
    " (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)

# A session is engaged (definitions.py), on its additive facts: flagged by the collector,
# engaged long enough, enough page views, or a conversion.
_ENGAGED = f"{{f}} OR {{m}} >= {ENGAGED_MIN_MSEC} OR {{p}} >= {ENGAGED_MIN_PAGEVIEWS} OR {{c}}"


def _session_facts(source: str, where: str = "TRUE") -> str:
    """Each session's additive facts from the events in ``source`` (a SELECT's body)."""
    return f"""
        SELECT user_id, session_id,
            coalesce(bool_or(session_engaged), false) AS flagged,
            coalesce(sum(engagement_time_msec), 0)::bigint AS msec,
            count(*) FILTER (WHERE event_name = '{PAGE_VIEW}') AS pageviews,
            coalesce(bool_or(event_name = ANY(:conversions)), false) AS converted
        FROM {source}
        WHERE {where} AND user_id IS NOT NULL AND session_id IS NOT NULL
        GROUP BY user_id, session_id
    """


_SESSIONS = text(
    f"""
    CREATE TEMP TABLE pulse_sess ON COMMIT DROP AS
    WITH d AS ({_session_facts(LOADED_TABLE)}),
    old AS (
        SELECT s.user_id, s.session_id, s.engaged FROM stats_sessions s
        JOIN d ON d.user_id = s.user_id AND d.session_id = s.session_id
        WHERE s.tenant_id = :tenant_id
    ),
    up AS (
        INSERT INTO stats_sessions AS s (tenant_id, user_id, session_id, flagged,
            engagement_msec, pageviews, converted, engaged)
        SELECT :tenant_id, user_id, session_id, flagged, msec, pageviews, converted,
            {_ENGAGED.format(f="flagged", m="msec", p="pageviews", c="converted")}
        FROM d
        ON CONFLICT (tenant_id, user_id, session_id) DO UPDATE SET
            flagged = s.flagged OR excluded.flagged,
            engagement_msec = s.engagement_msec + excluded.engagement_msec,
            pageviews = s.pageviews + excluded.pageviews,
            converted = s.converted OR excluded.converted,
            engaged = {
        _ENGAGED.format(
            f="s.flagged OR excluded.flagged",
            m="s.engagement_msec + excluded.engagement_msec",
            p="s.pageviews + excluded.pageviews",
            c="s.converted OR excluded.converted",
        )
    }
        RETURNING s.user_id, s.session_id, s.engaged
    )
    SELECT up.user_id, up.session_id, up.engaged,
        old.user_id IS NOT NULL AS existed,
        up.engaged AND old.user_id IS NOT NULL AND NOT old.engaged AS flipped
    FROM up LEFT JOIN old ON old.user_id = up.user_id AND old.session_id = up.session_id
    """
)

_BUCKET = {
    GRAIN_HOUR: "date_trunc('hour', {e}.occurred_at, 'UTC')",
    GRAIN_DAY: "(({e}.occurred_at AT TIME ZONE :tz)::date)::timestamp AT TIME ZONE :tz",
}
_UH = "CASE WHEN {e}.user_id IS NOT NULL THEN hashtextextended({e}.user_id, 0) END"
_SH = (
    "CASE WHEN {e}.user_id IS NOT NULL AND {e}.session_id IS NOT NULL"
    " THEN hashtextextended({e}.user_id || chr(31) || {e}.session_id, 0) END"
)


def _fanout(grain: int, e: str) -> str:
    if grain == GRAIN_HOUR:
        return "(VALUES (0, ''))"
    values = ", ".join(
        f"({i}, coalesce(nullif({e}.{name}, ''), '(not set)'))"
        for i, name in enumerate(DIMENSION_NAMES, start=1)
    )
    return f"(VALUES (0, ''), {values})"


def _earlier(hash_key: str, keys: str, match: str, *, bucket: str, fanout: str) -> str:
    """(bucket, dim, value, hash) of the loaded users' (or sessions') earlier events: not
    this transaction's, within the loaded rows' time span. Looked up key by key through
    the session index; the time bounds are written so that no index can serve them: the
    day just loaded is newer than the planner's statistics, so it expects one row in
    range and walks the (tenant, occurred_at) index once per user over the whole window
    (54 s instead of 1 s for a 45k-row week)."""
    hashed = (_UH if hash_key == "uh" else _SH).format(e="e")
    return f"""
            SELECT DISTINCT {bucket} AS bucket, d.dim, d.value, {hashed} AS {hash_key}
            FROM ({keys}) u
            CROSS JOIN LATERAL (
                SELECT e.* FROM events e
                WHERE e.tenant_id = :tenant_id AND e.user_id = u.user_id {match}
                  AND e.occurred_at + interval '0 s' >= :lo
                  AND e.occurred_at + interval '0 s' < :hi
                  AND e.xmin::text::bigint <> :xid
                OFFSET 0
            ) e
            CROSS JOIN LATERAL {fanout} AS d(dim, value)
        """


def _aggregate(grain: int) -> Any:
    """One row per group the load touches: sums, exact-count increments, the hashes to
    merge (big-endian int8s in one bytea each) and the stored sketches."""
    fan_b, fan_e = _fanout(grain, "b"), _fanout(grain, "e")
    bucket_l, bucket_e = _BUCKET[grain].format(e="l"), _BUCKET[grain].format(e="e")
    return text(
        f"""
        WITH base AS MATERIALIZED (
            -- Bucket, hashes and flags once per event, before the fan-out to dimensions.
            SELECT l.*, {bucket_l} AS bucket,
                {_UH.format(e="l")} AS uh, {_SH.format(e="l")} AS sh,
                l.event_name = ANY(:conversions) AS is_conversion,
                coalesce(s.engaged, false) AS is_engaged
            FROM {LOADED_TABLE} l
            LEFT JOIN pulse_sess s ON s.user_id = l.user_id AND s.session_id = l.session_id
        ),
        new AS (
            SELECT b.bucket, d.dim, d.value, b.uh, b.sh,
                b.event_name, b.engagement_time_msec, b.revenue, b.is_conversion, b.is_engaged
            FROM base b
            CROSS JOIN LATERAL {fan_b} AS d(dim, value)
        ),
        -- One row per session (and user) within each group: the later steps work on
        -- sessions, several times fewer than events (the sums add up again).
        per_session AS MATERIALIZED (
            SELECT bucket, dim, value, uh, sh,
                count(*) AS events,
                count(*) FILTER (WHERE event_name = '{PAGE_VIEW}') AS pageviews,
                count(*) FILTER (WHERE event_name = '{FIRST_VISIT}') AS new_users,
                count(*) FILTER (WHERE is_conversion) AS conversions,
                sum(engagement_time_msec) AS engagement_msec,
                sum(revenue) AS revenue,
                bool_or(is_engaged) AS engaged,
                bool_or(is_conversion) AS converting
            FROM new GROUP BY bucket, dim, value, uh, sh
        ),
        -- Earlier events (not this transaction's) of the loaded users (see _earlier).
        prior_users AS MATERIALIZED ({
            _earlier(
                "uh",
                f"SELECT DISTINCT user_id FROM {LOADED_TABLE} WHERE user_id IS NOT NULL",
                "",
                bucket=bucket_e,
                fanout=fan_e,
            )
        }),
        -- Only sessions that had events before this load can have earlier events.
        prior_sessions AS MATERIALIZED ({
            _earlier(
                "sh",
                "SELECT user_id, session_id FROM pulse_sess WHERE existed",
                "AND e.session_id = u.session_id",
                bucket=bucket_e,
                fanout=fan_e,
            )
        }),
        -- Every event of a session that turned engaged with this load: its groups'
        -- engaged sketches gain the session.
        flipped AS MATERIALIZED (
            SELECT DISTINCT {bucket_e} AS bucket, d.dim, d.value, {_SH.format(e="e")} AS sh
            FROM pulse_sess f
            CROSS JOIN LATERAL (
                SELECT e.* FROM events e
                WHERE e.tenant_id = :tenant_id AND e.user_id = f.user_id
                  AND e.session_id = f.session_id
                OFFSET 0
            ) e
            CROSS JOIN LATERAL {fan_e} AS d(dim, value)
            WHERE f.flipped
        ),
        sums AS (
            SELECT bucket, dim, value,
                sum(events)::bigint AS events,
                sum(pageviews)::bigint AS pageviews,
                sum(new_users)::bigint AS new_users,
                sum(conversions)::bigint AS conversions,
                coalesce(sum(engagement_msec), 0)::bigint AS engagement_msec,
                coalesce(sum(revenue), 0) AS revenue
            FROM per_session GROUP BY bucket, dim, value
        ),
        users AS (
            SELECT x.bucket, x.dim, x.value,
                count(*) FILTER (WHERE p.uh IS NULL) AS fresh,
                string_agg(int8send(x.uh), ''::bytea) AS hashes
            FROM (SELECT DISTINCT bucket, dim, value, uh FROM per_session
                  WHERE uh IS NOT NULL) x
            LEFT JOIN prior_users p
                ON (p.bucket, p.dim, p.value, p.uh) = (x.bucket, x.dim, x.value, x.uh)
            GROUP BY x.bucket, x.dim, x.value
        ),
        sessions AS (
            -- A session hash is one (user, session): one per_session row per group.
            SELECT x.bucket, x.dim, x.value,
                count(*) FILTER (WHERE p.sh IS NULL) AS fresh,
                string_agg(int8send(x.sh), ''::bytea) AS hashes,
                string_agg(int8send(x.sh), ''::bytea) FILTER (WHERE x.engaged) AS engaged,
                string_agg(int8send(x.sh), ''::bytea) FILTER (WHERE x.converting) AS converting
            FROM per_session x
            LEFT JOIN prior_sessions p
                ON (p.bucket, p.dim, p.value, p.sh) = (x.bucket, x.dim, x.value, x.sh)
            WHERE x.sh IS NOT NULL
            GROUP BY x.bucket, x.dim, x.value
        ),
        late AS (
            SELECT bucket, dim, value, string_agg(int8send(sh), ''::bytea) AS hashes
            FROM flipped WHERE sh IS NOT NULL GROUP BY bucket, dim, value
        ),
        groups AS (
            SELECT bucket, dim, value FROM sums
            UNION SELECT bucket, dim, value FROM late
        )
        SELECT g.bucket, g.dim, g.value,
            coalesce(s.events, 0) AS events, coalesce(s.pageviews, 0) AS pageviews,
            coalesce(s.new_users, 0) AS new_users, coalesce(s.conversions, 0) AS conversions,
            coalesce(s.engagement_msec, 0) AS engagement_msec, coalesce(s.revenue, 0) AS revenue,
            coalesce(u.fresh, 0) AS users_fresh, coalesce(ss.fresh, 0) AS sessions_fresh,
            u.hashes AS users, ss.hashes AS sessions,
            CASE WHEN late.hashes IS NULL THEN ss.engaged
                 ELSE coalesce(ss.engaged, ''::bytea) || late.hashes END AS engaged,
            ss.converting AS converting,
            r.users_hll, r.sessions_hll, r.engaged_hll, r.converting_hll
        FROM groups g
        LEFT JOIN sums s ON (s.bucket, s.dim, s.value) = (g.bucket, g.dim, g.value)
        LEFT JOIN users u ON (u.bucket, u.dim, u.value) = (g.bucket, g.dim, g.value)
        LEFT JOIN sessions ss ON (ss.bucket, ss.dim, ss.value) = (g.bucket, g.dim, g.value)
        LEFT JOIN late ON (late.bucket, late.dim, late.value) = (g.bucket, g.dim, g.value)
        LEFT JOIN stats_rollups r ON r.tenant_id = :tenant_id AND r.grain = {grain}
            AND r.dim = g.dim AND r.bucket = g.bucket AND r.value = g.value
        """
    )


_AGGREGATE = {grain: _aggregate(grain) for grain in (GRAIN_HOUR, GRAIN_DAY)}
_SPAN = text(
    f"SELECT min(occurred_at) - interval '1 day' AS lo, max(occurred_at) + interval '1 day' AS hi"
    f" FROM {LOADED_TABLE}"
)
_SORT_OFF = text("SELECT set_config('enable_sort', 'off', true)")
_SORT_ON = text("SELECT set_config('enable_sort', 'on', true)")
_XID = text("SELECT (pg_current_xact_id()::text::bigint % 4294967296) AS xid")
_NEW_ROWS = "pulse_rollup_new"
_UPSERT = text(
    f"""
    INSERT INTO stats_rollups AS r SELECT * FROM {_NEW_ROWS}
    ON CONFLICT (tenant_id, grain, dim, bucket, value) DO UPDATE SET
        events = r.events + excluded.events,
        pageviews = r.pageviews + excluded.pageviews,
        new_users = r.new_users + excluded.new_users,
        conversions = r.conversions + excluded.conversions,
        engagement_msec = r.engagement_msec + excluded.engagement_msec,
        revenue = r.revenue + excluded.revenue,
        users_count = r.users_count + excluded.users_count,
        sessions_count = r.sessions_count + excluded.sessions_count,
        users_hll = excluded.users_hll,
        sessions_hll = excluded.sessions_hll,
        engaged_hll = excluded.engaged_hll,
        converting_hll = excluded.converting_hll
    """
)

# What the worker gets per group: the stored sketch and the hashes to add, four times.
SketchInput = tuple[bytes | None, bytes | None]


def _union(stored: bytes | None, hashes: bytes | None) -> bytes | None:
    if not hashes:
        return stored
    sketch = datasketches.hll_sketch(LG_K, HLL_TYPE)
    for value in hash_values(hashes):
        sketch.update(value)
    if stored is None:
        return bytes(sketch.serialize_compact())
    union = datasketches.hll_union(LG_K)
    union.update(datasketches.hll_sketch.deserialize(bytes(stored)))
    union.update(sketch)
    return bytes(union.get_result(HLL_TYPE).serialize_compact())


def merge_sketches_of_groups(
    groups: Sequence[tuple[SketchInput, SketchInput, SketchInput, SketchInput]],
) -> list[tuple[bytes | None, bytes | None, bytes | None, bytes | None]]:
    """Each group's four stored sketches with its new hashes added (a union). Pure CPU:
    runs in a worker process; bytes in, bytes out."""
    out = []
    for u, s, e, c in groups:
        out.append((_union(*u), _union(*s), _union(*e), _union(*c)))
    return out


async def apply_loaded(
    session: AsyncSession,
    tenant_id: str,
    *,
    timezone: str,
    conversions: list[str],
    run: RunInWorker | None = None,
) -> int:
    """Add this transaction's loaded rows (``pulse_loaded``) to the tenant's rollups.
    Returns the number of rollup rows written."""
    await session.execute(text(f"ANALYZE pg_temp.{LOADED_TABLE}"))
    span = (await session.execute(_SPAN)).one()
    if span.lo is None:
        return 0
    xid = (await session.execute(_XID)).scalar_one()
    params = {
        "tenant_id": tenant_id,
        "conversions": conversions,
        "tz": timezone,
        "lo": span.lo,
        "hi": span.hi,
        "xid": int(xid),
    }
    await session.execute(text("DROP TABLE IF EXISTS pg_temp.pulse_sess"))
    await session.execute(_SESSIONS, params)
    await session.execute(text("ANALYZE pg_temp.pulse_sess"))
    await session.execute(text(f"DROP TABLE IF EXISTS pg_temp.{_NEW_ROWS}"))
    await session.execute(
        text(f"CREATE TEMP TABLE {_NEW_ROWS} (LIKE stats_rollups) ON COMMIT DROP")
    )
    written = 0
    # Few groups from many fanned-out rows: hash aggregation beats the sorts the planner
    # picks (as in the rebuild); put back below for the caller's transaction.
    await session.execute(_SORT_OFF)
    for grain in (GRAIN_HOUR, GRAIN_DAY):
        rows = (await session.execute(_AGGREGATE[grain], params)).all()
        if not rows:
            continue
        inputs = [
            (
                (r.users_hll, r.users),
                (r.sessions_hll, r.sessions),
                (r.engaged_hll, r.engaged),
                (r.converting_hll, r.converting),
            )
            for r in rows
        ]
        merged = await (run or run_inline)(merge_sketches_of_groups, inputs)
        records = [
            (
                tenant_id,
                grain,
                r.dim,
                r.bucket,
                r.value,
                r.events,
                r.pageviews,
                r.new_users,
                r.conversions,
                int(r.engagement_msec),
                r.revenue,
                r.users_fresh,
                r.sessions_fresh,
                *sketches,
            )
            for r, sketches in zip(rows, merged, strict=True)
        ]
        written += await copy_rows(session, _NEW_ROWS, ROLLUP_COLUMNS, records)
    await session.execute(_SORT_ON)
    await session.execute(_UPSERT)
    await invalidate_coarse(session, tenant_id, timezone, _NEW_ROWS)  # weeks/months over them
    return written


_REBUILD_SESSIONS = (
    text("DELETE FROM stats_sessions WHERE tenant_id = :tenant_id"),
    text(
        f"""
        INSERT INTO stats_sessions (tenant_id, user_id, session_id, flagged,
            engagement_msec, pageviews, converted, engaged)
        SELECT :tenant_id, user_id, session_id, flagged, msec, pageviews, converted,
            {_ENGAGED.format(f="flagged", m="msec", p="pageviews", c="converted")}
        FROM ({_session_facts("events", "tenant_id = :tenant_id")}) d
        """
    ),
)


async def rebuild_sessions(session: AsyncSession, tenant_id: str, conversions: list[str]) -> None:
    """Recompute every session fact of the tenant (with a full rollup rebuild)."""
    for statement in _REBUILD_SESSIONS:
        await session.execute(statement, {"tenant_id": tenant_id, "conversions": conversions})
