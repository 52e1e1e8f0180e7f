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

from app.core.cpu import background_slice
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


class EventLoad:
    """One transaction's loads of a tenant's events.

    :meth:`add` merges rows as they come; :meth:`finish` then brings the dashboard's
    rollups and the tenant's data version up to date once, for every day the loads
    touched. A large file loaded in many batches inside one transaction is therefore
    aggregated once, not once per batch (which re-read each day many times over).
    Everything runs in the caller's transaction and only flushes: the caller commits,
    together with its own bookkeeping (cursor, ledger, counts).
    """

    def __init__(
        self, session: AsyncSession, tenant_id: str, *, source_id: uuid.UUID | None
    ) -> None:
        self._session = session
        self._tenant_id = tenant_id
        self._source_id = source_id
        self._days: set[date] = set()
        self._newest: datetime | None = None
        self._locked = False

    async def add(self, events: Sequence[CanonicalEvent]) -> LoadResult:
        """Merge validated events; rows whose (tenant, event_id) exists are skipped."""
        if not events:
            return LoadResult(0, 0)
        session, tenant_id = self._session, self._tenant_id
        await session.execute(_CREATE_STAGING)
        for start in range(0, len(events), _SLICE):
            async with background_slice():
                records = _records(tenant_id, events[start : start + _SLICE], self._source_id)
            await copy_rows(session, STAGING_TABLE, LOAD_COLUMNS, records)
        # The staging table is private to this connection; only the merge takes turns.
        if not self._locked:
            await _take_tenant_load_lock(session, tenant_id)
            self._locked = True
        row = (await session.execute(_MERGE)).one()
        await session.execute(text(f"TRUNCATE {STAGING_TABLE}"))
        inserted = int(row.inserted)
        days = frozenset(row.days)
        if inserted:
            self._days |= days
            if self._newest is None or row.newest > self._newest:
                self._newest = row.newest
        log.debug(
            "events.loaded",
            tenant_id=tenant_id,
            inserted=inserted,
            duplicates=len(events) - inserted,
            days=len(days),
        )
        return LoadResult(inserted=inserted, duplicates=len(events) - inserted, affected_days=days)

    async def finish(self) -> None:
        """Refresh the rollups of every touched day and bump the data version (once)."""
        if not self._days:
            return
        days, self._days = self._days, set()
        await refresh_rollups(self._session, self._tenant_id, days)
        await self._session.execute(
            _BUMP_VERSION, {"tenant_id": self._tenant_id, "newest": self._newest}
        )
        self._newest = None


async def load_events(
    session: AsyncSession,
    tenant_id: str,
    events: Sequence[CanonicalEvent],
    *,
    source_id: uuid.UUID | None,
) -> LoadResult:
    """Load one batch of validated events, with its rollups and data version
    (:class:`EventLoad` for many batches in one transaction)."""
    load = EventLoad(session, tenant_id, source_id=source_id)
    result = await load.add(events)
    await load.finish()
    return result


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
