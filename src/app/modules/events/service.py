"""Loading events idempotently, and the per-tenant data version the dashboard caches on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import msgspec
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import raw_connection
from app.core.workers import WorkerPool
from app.modules.events.increments import CREATE_LOADED, LOADED_TABLE, apply_loaded
from app.modules.events.rollups import refresh_rollups
from app.modules.events.schema import LOAD_COLUMNS, CanonicalEvent, copy_line
from app.modules.events.state import rollup_state, sessions_built

log = structlog.get_logger("app.events")

STAGING_TABLE = "events_staging"

_CREATE_STAGING = text(
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} "
    "(LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_COLUMNS_SQL = ", ".join(f'"{c}"' for c in LOAD_COLUMNS)


def _merge_sql(*, keep: bool) -> Any:
    """Staging -> events, skipping rows whose (tenant, event_id) exists; the inserted
    count, their UTC days and the newest. ``keep``: also keep the inserted rows in
    pulse_loaded, for an incremental rollup update (``increments``). A transaction whose
    rollups are rebuilt from the events table anyway (a tenant's first load, a timezone
    change) does without: the copy would be a second write of every row for nothing."""
    if keep:
        returning = "*"
        loaded = (
            f"kept AS (INSERT INTO {LOADED_TABLE} SELECT * FROM inserted RETURNING occurred_at)"
        )
        source = "kept"
    else:
        returning, loaded, source = "occurred_at", "", "inserted"
    return text(
        f"""
        WITH inserted AS (
            INSERT INTO events ({_COLUMNS_SQL})
            SELECT {_COLUMNS_SQL} FROM {STAGING_TABLE}
            ON CONFLICT (tenant_id, event_id) DO NOTHING
            RETURNING {returning}
        ){", " + loaded if loaded else ""}
        SELECT count(*) AS inserted,
            coalesce(array_agg(DISTINCT (occurred_at AT TIME ZONE 'UTC')::date), '{{}}') AS days,
            max(occurred_at) AS newest
        FROM {source}
        """
    )


_MERGE = _merge_sql(keep=True)
_MERGE_ONLY = _merge_sql(keep=False)
# COPY data is sent in pieces of this size (the driver's own buffer is similar).
_COPY_CHUNK = 1 << 18
# How long a load waits for its turn behind other loads of the tenant by default
# (imports pass ``PULSE_INGEST_LOAD_LOCK_WAIT_S``).
DEFAULT_LOCK_WAIT_S = 600.0
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


class LoadLockTimeout(TimeoutError):
    """Another load of the tenant held its turn for longer than the wait allowed."""


async def _copy_text(session: AsyncSession, payload: bytes) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        view = memoryview(payload)
        for start in range(0, len(view), _COPY_CHUNK):
            yield bytes(view[start : start + _COPY_CHUNK])

    driver = await raw_connection(session)
    await driver.copy_to_table(
        STAGING_TABLE, source=chunks(), columns=list(LOAD_COLUMNS), format="text"
    )


async def _take_tenant_load_lock(
    session: AsyncSession,
    tenant_id: str,
    *,
    wait_s: float,
    on_wait: Callable[[], None] | None = None,
) -> None:
    # Loads of one tenant take turns until commit: the rollup refresh rebuilds whole days
    # from the events table, and two transactions doing so at once would each miss the
    # other's rows (and race on the rollup keys). Taking the lock before the merge means
    # this transaction's later statements see the previous load's committed rows.
    # Polled rather than waited for in one statement: a wait behind several loads can
    # outlast the statement timeout, and polling keeps every statement short.
    # The wait has a deadline: a load stuck behind another for longer fails (transient;
    # the run is retried later) instead of waiting for ever with its lease kept alive.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay = 0.01
    while not (await session.execute(_TRY_TENANT_LOAD_LOCK, {"tenant_id": tenant_id})).scalar():
        if on_wait is not None:
            on_wait()
            on_wait = None
        if loop.time() + delay > deadline:
            raise LoadLockTimeout(
                f"another import of this tenant held its turn for more than {wait_s:g} s"
            )
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
        self,
        session: AsyncSession,
        tenant_id: str,
        *,
        source_id: uuid.UUID | None,
        lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
        on_lock_wait: Callable[[], None] | None = None,
        workers: WorkerPool | None = None,
        work_mem_mb: int | None = None,
        turns: asyncio.Semaphore | None = None,
    ) -> None:
        self._session = session
        self._tenant_id = tenant_id
        self._source_id = source_id
        self._lock_wait_s = lock_wait_s
        self._on_lock_wait = on_lock_wait
        # Sketch merges run there (CPU work); without a pool, on the loop (small loads).
        self._workers = workers
        # The rollup statements hash-aggregate every loaded row fanned out to each
        # dimension: with PostgreSQL's default work_mem (4 MB) those aggregates spill to
        # disk in batches. Raised for this transaction only (``SET LOCAL``).
        self._work_mem_mb = work_mem_mb
        # The heavy statements (COPY, merge, rollups) run holding one of these slots,
        # shared by the process's imports: a few at once keep the database's cores for
        # the dashboard. Never held while waiting for the tenant's load lock (the holder
        # of that lock may need a slot to reach its commit).
        self._turns = turns
        self._days: set[date] = set()
        self._newest: datetime | None = None
        self._locked = False
        # Whether this transaction's rows are kept for an incremental rollup update
        # (decided once, with the tenant's load lock held; see :meth:`_incremental`).
        self._tracking: bool | None = None

    async def _incremental(self) -> tuple[bool, str, list[str]]:
        """Whether the rollups can take this transaction's rows incrementally (they were
        built with the tenant's current timezone and conversion events), with those."""
        from app.modules.tenants import get_tenant_config

        session, tenant_id = self._session, self._tenant_id
        config = await get_tenant_config(session, tenant_id)
        conversions = sorted(config.conversion_events)
        state = await rollup_state(session, tenant_id)
        usable = (
            state is not None
            and state.timezone == config.timezone
            and state.conversion_events == tuple(conversions)
            and await sessions_built(session, tenant_id)
        )
        return usable, config.timezone, conversions

    def _turn(self) -> AbstractAsyncContextManager[Any]:
        return self._turns if self._turns is not None else nullcontext()

    async def add(self, events: Sequence[CanonicalEvent]) -> LoadResult:
        """Merge validated events; rows whose (tenant, event_id) exists are skipped.

        Small loads and tests; imports prepare COPY text in worker processes and use
        :meth:`add_copy` (building it here is CPU work on the loop).
        """
        if not events:
            return LoadResult(0, 0)
        source = None if self._source_id is None else str(self._source_id)
        payload = b"".join(copy_line(self._tenant_id, source, e) for e in events)
        return await self.add_copy(payload, len(events))

    async def add_copy(self, payload: bytes, rows: int) -> LoadResult:
        """Merge ``rows`` events given as COPY text-format lines in ``LOAD_COLUMNS`` order
        (:func:`app.modules.events.schema.copy_line`)."""
        if not rows:
            return LoadResult(0, 0)
        session, tenant_id = self._session, self._tenant_id
        async with self._turn():
            if self._work_mem_mb is not None and not self._locked:
                work_mem = f"SET LOCAL work_mem = '{int(self._work_mem_mb)}MB'"
                await session.execute(text(work_mem))
            await session.execute(_CREATE_STAGING)
            await _copy_text(session, payload)
        # The staging table is private to this connection: only the merge waits for the
        # tenant's load lock (without holding a slot).
        if not self._locked:
            await _take_tenant_load_lock(
                session, tenant_id, wait_s=self._lock_wait_s, on_wait=self._on_lock_wait
            )
            self._locked = True
        async with self._turn():
            if self._tracking is None:
                self._tracking = (await self._incremental())[0]
                if self._tracking:
                    await session.execute(CREATE_LOADED)
            row = (await session.execute(_MERGE if self._tracking else _MERGE_ONLY)).one()
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
            duplicates=rows - inserted,
            days=len(days),
        )
        return LoadResult(inserted=inserted, duplicates=rows - inserted, affected_days=days)

    async def finish(self) -> None:
        """Refresh the rollups of every touched day and bump the data version (once)."""
        if not self._days:
            return
        days, self._days = self._days, set()
        async with self._turn():
            await self._refresh(days)
        self._newest = None

    async def _refresh(self, days: set[date]) -> None:
        session, tenant_id = self._session, self._tenant_id
        usable, timezone, conversions = await self._incremental()
        run = self._workers.run if self._workers is not None else None
        if usable and self._tracking:
            # The usual case: add what this transaction loaded, whatever the day holds.
            await apply_loaded(
                session, tenant_id, timezone=timezone, conversions=conversions, run=run
            )
            await session.execute(text(f"TRUNCATE {LOADED_TABLE}"))
        else:
            # First build, or the tenant changed its timezone or conversion events
            # (rare), or they changed while this transaction loaded: rebuild the
            # touched days from the events table.
            await refresh_rollups(session, tenant_id, days, run=run)
        await session.execute(_BUMP_VERSION, {"tenant_id": tenant_id, "newest": self._newest})


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
