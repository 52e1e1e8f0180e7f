"""Loading events idempotently, and the per-tenant data version the dashboard caches on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import msgspec
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import copy_rows
from app.modules.events.rollups import refresh_rollups
from app.modules.events.schema import CANONICAL_FIELDS, CanonicalEvent

log = structlog.get_logger("app.events")

STAGING_TABLE = "events_staging"
LOAD_COLUMNS: tuple[str, ...] = ("tenant_id", *CANONICAL_FIELDS, "source_id")
# Records are built and COPYed in slices so the event loop is never held for long
# (a thread would not help: this is GIL-bound work).
_SLICE = 1000

_CREATE_STAGING = text(
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} "
    "(LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_COLUMNS_SQL = ", ".join(f'"{c}"' for c in LOAD_COLUMNS)
_MERGE = text(
    f"""
    WITH inserted AS (
        INSERT INTO events ({_COLUMNS_SQL})
        SELECT {_COLUMNS_SQL} FROM {STAGING_TABLE}
        ON CONFLICT (tenant_id, event_id) DO NOTHING
        RETURNING occurred_at
    )
    SELECT count(*) AS inserted,
           coalesce(array_agg(DISTINCT (occurred_at AT TIME ZONE 'UTC')::date), '{{}}') AS days,
           max(occurred_at) AS newest
    FROM inserted
    """
)
_TRY_TENANT_LOAD_LOCK = text("SELECT pg_try_advisory_xact_lock(7201004, hashtext(:tenant_id))")
_BUMP_VERSION = text(
    """
    INSERT INTO tenant_data_versions AS v (tenant_id, version, fresh_until, updated_at)
    VALUES (:tenant_id, 1, :newest, now())
    ON CONFLICT (tenant_id) DO UPDATE
    SET version = v.version + 1,
        fresh_until = GREATEST(v.fresh_until, EXCLUDED.fresh_until),
        updated_at = now()
    """
)


@dataclass(frozen=True)
class LoadResult:
    inserted: int
    duplicates: int
    affected_days: frozenset[date] = field(default_factory=frozenset)


class DataVersion(msgspec.Struct, frozen=True):
    """``version`` changes whenever the tenant's events change; ``fresh_until`` is the
    newest event time loaded so far (None before the first load)."""

    version: int
    fresh_until: datetime | None


def _records(
    tenant_id: str, events: Sequence[CanonicalEvent], source_id: uuid.UUID | None
) -> list[tuple[Any, ...]]:
    encode = msgspec.json.encode
    out: list[tuple[Any, ...]] = []
    for event in events:
        values = list(msgspec.structs.astuple(event))
        values[-1] = encode(values[-1]).decode()  # properties -> JSON text for jsonb
        out.append((tenant_id, *values, source_id))
    return out


async def _take_tenant_load_lock(session: AsyncSession, tenant_id: str) -> None:
    # Loads of one tenant take turns until commit: the rollup refresh rebuilds whole days
    # from the events table, and two transactions doing so at once would each miss the
    # other's rows (and race on the rollup keys). Taking the lock before the merge means
    # this transaction's later statements see the previous load's committed rows.
    # Polled rather than waited for in one statement: a wait behind several loads can
    # outlast the statement timeout, and polling keeps every statement short.
    delay = 0.01
    while not (await session.execute(_TRY_TENANT_LOAD_LOCK, {"tenant_id": tenant_id})).scalar():
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)


async def load_events(
    session: AsyncSession,
    tenant_id: str,
    events: Sequence[CanonicalEvent],
    *,
    source_id: uuid.UUID | None,
) -> LoadResult:
    """Load validated events into the store; rows whose (tenant, event_id) exists are skipped.

    COPY into a per-connection staging table, then one ``INSERT ... ON CONFLICT DO
    NOTHING``; the dashboard's rollups for the touched days are refreshed and the
    tenant's data version bumped, all inside the caller's transaction. Only flushes:
    the caller commits, together with its own bookkeeping (cursor, ledger, counts).
    """
    if not events:
        return LoadResult(0, 0)
    await session.execute(_CREATE_STAGING)
    for start in range(0, len(events), _SLICE):
        records = _records(tenant_id, events[start : start + _SLICE], source_id)
        await copy_rows(session, STAGING_TABLE, LOAD_COLUMNS, records)
    # The staging table is private to this connection; only the merge takes turns.
    await _take_tenant_load_lock(session, tenant_id)
    row = (await session.execute(_MERGE)).one()
    await session.execute(text(f"TRUNCATE {STAGING_TABLE}"))
    inserted = int(row.inserted)
    days = frozenset(row.days)
    if inserted:
        await refresh_rollups(session, tenant_id, days)
        await session.execute(_BUMP_VERSION, {"tenant_id": tenant_id, "newest": row.newest})
    log.debug(
        "events.loaded",
        tenant_id=tenant_id,
        inserted=inserted,
        duplicates=len(events) - inserted,
        days=len(days),
    )
    return LoadResult(inserted=inserted, duplicates=len(events) - inserted, affected_days=days)


async def get_data_version(session: AsyncSession, tenant_id: str) -> DataVersion:
    """The tenant's current data version (0 and None before anything was loaded)."""
    row = (
        await session.execute(
            text("SELECT version, fresh_until FROM tenant_data_versions WHERE tenant_id = :t"),
            {"t": tenant_id},
        )
    ).one_or_none()
    if row is None:
        return DataVersion(version=0, fresh_until=None)
    return DataVersion(version=int(row.version), fresh_until=row.fresh_until)
