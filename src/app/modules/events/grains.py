"""Week and month rollup rows, derived from the day rows (issue #14).

A 365-day summary reads 365 day rows and unions their sketches; a breakdown reads 365
rows per value. Week rows (ISO weeks, Monday start, in the tenant's local days) and
month rows (local calendar months) in ``stats_rollups`` let a long range read about
twelve month rows and a few week and day rows at its edges instead
(:func:`app.modules.events.widget_sql.rollup_source`).

The rows are *derived*, never written by a load: :func:`compact_rollups` builds them
after an import has committed, for every complete week and month that lacks them
(sums added in SQL, sketches unioned with DataSketches in the worker pool). A coarse
row holds exactly what merging its day rows at query time would give: the sums, the
sums of the day rows' exact distinct counts (what a breakdown over several days ranks
by), the union of their sketches (a union of unions has the same registers), and
``day_rows``, so that a group made of one day row is still answered exactly.

Whatever changes a day row makes the covering week and month rows disappear in the same
transaction (:func:`invalidate_coarse` after an incremental load, :func:`drop_coarse`
before a rebuild); a query uses a week or month only when its total row (dimension 0)
exists, so it never mixes stale coarse rows with fresh day rows. The tenant's load lock
keeps a compaction and a load of the same tenant from interleaving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import datasketches  # type: ignore[import-untyped]
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import Database, copy_rows_through_staging
from app.core.workers import RunInWorker, run_inline
from app.modules.events.definitions import GRAIN_DAY, GRAIN_MONTH, GRAIN_WEEK
from app.modules.events.models import ROLLUP_COLUMNS
from app.modules.events.sketches import HLL_TYPE, LG_K
from app.modules.events.state import rollup_state

log = structlog.get_logger("app.events.grains")

# Coarse grain -> (date_trunc unit, length) in the tenant's local calendar.
COARSE_GRAINS: dict[int, tuple[str, str]] = {
    GRAIN_WEEK: ("week", "7 days"),
    GRAIN_MONTH: ("month", "1 month"),
}
# Periods built per transaction: the tenant's load lock is held for one batch only.
PERIODS_PER_BATCH = 4
# Groups fetched (and sent to a worker) at a time.
_FETCH_ROWS = 256
_COLUMNS = (*ROLLUP_COLUMNS, "day_rows")
# The same lock as a load of the tenant (app.modules.events.service).
_TRY_TENANT_LOAD_LOCK = text("SELECT pg_try_advisory_xact_lock(7201004, hashtext(:tenant_id))")
_TENANT_LOAD_LOCK = text("SELECT pg_advisory_xact_lock(7201004, hashtext(:tenant_id))")

_COARSE_IN = f"({GRAIN_WEEK}, {GRAIN_MONTH})"
_DROP = text(f"DELETE FROM stats_rollups WHERE tenant_id = :tenant_id AND grain IN {_COARSE_IN}")
_INVALIDATE = f"""
    DELETE FROM stats_rollups c
    WHERE c.tenant_id = :tenant_id AND c.grain IN {_COARSE_IN}
      AND (c.grain, c.bucket) IN (
          SELECT g.grain, date_trunc(g.unit, n.local) AT TIME ZONE :tz
          FROM (SELECT DISTINCT bucket AT TIME ZONE :tz AS local FROM {{table}}
                WHERE grain = {GRAIN_DAY}) n
          CROSS JOIN (VALUES ({GRAIN_WEEK}, 'week'), ({GRAIN_MONTH}, 'month')) AS g(grain, unit))
"""
_MISSING = text(
    f"""
    SELECT p.local_lo AT TIME ZONE :tz AS lo,
        (p.local_lo + CAST(CAST(:step AS text) AS interval)) AT TIME ZONE :tz AS hi
    FROM (
        SELECT DISTINCT date_trunc(:unit, d.bucket AT TIME ZONE :tz) AS local_lo
        FROM stats_rollups d
        WHERE d.tenant_id = :tenant_id AND d.grain = {GRAIN_DAY} AND d.dim = 0
    ) p
    WHERE p.local_lo + CAST(CAST(:step AS text) AS interval)
        <= date_trunc('day', CAST(:now AS timestamptz) AT TIME ZONE :tz)
      AND NOT EXISTS (
          SELECT 1 FROM stats_rollups c
          WHERE c.tenant_id = :tenant_id AND c.grain = :grain AND c.dim = 0
            AND c.bucket = p.local_lo AT TIME ZONE :tz)
    ORDER BY 1
    """
)
_AGGREGATE = f"""
    SELECT d.dim, d.value,
        sum(d.events)::bigint AS events, sum(d.pageviews)::bigint AS pageviews,
        sum(d.new_users)::bigint AS new_users, sum(d.conversions)::bigint AS conversions,
        sum(d.engagement_msec)::bigint AS engagement_msec, sum(d.revenue) AS revenue,
        sum(d.users_count)::bigint AS users_count,
        sum(d.sessions_count)::bigint AS sessions_count,
        count(*)::smallint AS day_rows,
        array_agg(d.users_hll) FILTER (WHERE d.users_hll IS NOT NULL) AS users_hll,
        array_agg(d.sessions_hll) FILTER (WHERE d.sessions_hll IS NOT NULL) AS sessions_hll,
        array_agg(d.engaged_hll) FILTER (WHERE d.engaged_hll IS NOT NULL) AS engaged_hll,
        array_agg(d.converting_hll) FILTER (WHERE d.converting_hll IS NOT NULL)
            AS converting_hll
    FROM stats_rollups d
    WHERE d.tenant_id = :tenant_id AND d.grain = {GRAIN_DAY} AND d.bucket >= :lo AND d.bucket < :hi
    GROUP BY d.dim, d.value
"""
_DECLARE = text(f"DECLARE pulse_coarse_cur NO SCROLL CURSOR FOR {_AGGREGATE}")
_FETCH = text(f"FETCH {_FETCH_ROWS} FROM pulse_coarse_cur")
_CLOSE = text("CLOSE pulse_coarse_cur")


async def drop_coarse(session: AsyncSession, tenant_id: str) -> None:
    """Delete every week and month row of the tenant (its day rows are being rebuilt).

    Takes the tenant's load lock (already held inside a load): a compaction running
    meanwhile commits first, and its rows are deleted here too."""
    await session.execute(_TENANT_LOAD_LOCK, {"tenant_id": tenant_id})
    await session.execute(_DROP, {"tenant_id": tenant_id})


async def invalidate_coarse(
    session: AsyncSession, tenant_id: str, timezone: str, written: str
) -> None:
    """Delete the week and month rows covering any day row in the temporary table
    ``written`` (rows shaped like ``stats_rollups`` just added to the day rows)."""
    await session.execute(
        text(_INVALIDATE.format(table=written)), {"tenant_id": tenant_id, "tz": timezone}
    )


SketchBlobs = Sequence[bytes] | None
Unioned = tuple[bytes | None, bytes | None, bytes | None, bytes | None]


def _union(blobs: SketchBlobs) -> bytes | None:
    if not blobs:
        return None
    union = datasketches.hll_union(LG_K)
    for blob in blobs:
        union.update(datasketches.hll_sketch.deserialize(bytes(blob)))
    return bytes(union.get_result(HLL_TYPE).serialize_compact())


def union_group_sketches(
    groups: Sequence[tuple[SketchBlobs, SketchBlobs, SketchBlobs, SketchBlobs]],
) -> list[Unioned]:
    """Per group, the union of each of its four sketch lists. Pure CPU: runs in a worker
    process; bytes in, bytes out."""
    return [(_union(u), _union(s), _union(e), _union(c)) for u, s, e, c in groups]


@dataclass(frozen=True)
class Compaction:
    """What one :func:`compact_rollups` call did."""

    built: int  # weeks and months built
    remaining: bool  # more are missing (call again, in a new transaction)
    locked_out: bool = False  # a load of the tenant held its lock: nothing was done


async def _build_period(
    session: AsyncSession,
    tenant_id: str,
    grain: int,
    lo: datetime,
    hi: datetime,
    run: RunInWorker,
) -> int:
    params = {"tenant_id": tenant_id, "lo": lo, "hi": hi}
    records: list[tuple[Any, ...]] = []
    await session.execute(_DECLARE, params)
    while part := (await session.execute(_FETCH)).all():
        unioned = await run(
            union_group_sketches,
            [(r.users_hll, r.sessions_hll, r.engaged_hll, r.converting_hll) for r in part],
        )
        records.extend(
            (
                tenant_id,
                grain,
                r.dim,
                lo,
                r.value,
                r.events,
                r.pageviews,
                r.new_users,
                r.conversions,
                r.engagement_msec,
                r.revenue,
                r.users_count,
                r.sessions_count,
                *sketches,
                r.day_rows,
            )
            for r, sketches in zip(part, unioned, strict=True)
        )
    await session.execute(_CLOSE)
    return await copy_rows_through_staging(session, "stats_rollups", _COLUMNS, records)


async def compact_rollups(
    session: AsyncSession,
    tenant_id: str,
    *,
    now: datetime,
    run: RunInWorker | None = None,
    max_periods: int = PERIODS_PER_BATCH,
) -> Compaction:
    """Build up to ``max_periods`` missing week and month rows of the tenant, for local
    weeks and months that ended before ``now``'s local day, from its day rows.

    Runs in the caller's transaction (the caller commits) under the tenant's load lock;
    when a load holds it, does nothing (``locked_out``). Months first: a long range
    gains most from them.
    """
    locked = await session.execute(_TRY_TENANT_LOAD_LOCK, {"tenant_id": tenant_id})
    if not locked.scalar():
        return Compaction(0, remaining=True, locked_out=True)
    state = await rollup_state(session, tenant_id)
    if state is None:
        return Compaction(0, remaining=False)
    built = 0
    for grain in (GRAIN_MONTH, GRAIN_WEEK):
        unit, step = COARSE_GRAINS[grain]
        missing = (
            await session.execute(
                _MISSING,
                {
                    "tenant_id": tenant_id,
                    "tz": state.timezone,
                    "unit": unit,
                    "step": step,
                    "grain": grain,
                    "now": now,
                },
            )
        ).all()
        for period in missing:
            if built == max_periods:
                return Compaction(built, remaining=True)
            rows = await _build_period(
                session, tenant_id, grain, period.lo, period.hi, run or run_inline
            )
            built += 1
            log.debug(
                "rollups.coarse_built",
                tenant_id=tenant_id,
                grain=grain,
                bucket=period.lo.isoformat(),
                rows=rows,
            )
    return Compaction(built, remaining=False)


async def compact_tenant_rollups(
    db: Database,
    tenant_id: str,
    *,
    run: RunInWorker | None = None,
    now: datetime | None = None,
    turns: asyncio.Semaphore | None = None,
) -> int:
    """Build every missing week and month row of the tenant, a few per transaction
    (:func:`compact_rollups`); returns how many were built. Stops early when a load of
    the tenant holds its lock (the load's own run compacts after it commits)."""
    built = 0
    at = now or datetime.now(UTC)
    while True:
        # ``turns``: the importing process's slots for heavy statements (EventLoad).
        async with turns or nullcontext(), db.session(tenant_id) as session:
            done = await compact_rollups(session, tenant_id, now=at, run=run)
            await session.commit()
        built += done.built
        if not done.remaining or done.locked_out:
            break
    if built:
        log.info("rollups.compacted", tenant_id=tenant_id, periods=built)
    return built
