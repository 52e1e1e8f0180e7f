"""The SQL of the run lifecycle: claim, heartbeat, fenced progress, finish, retry, reap.

Every write to a running run is *fenced* by ``lease_owner``: a worker that lost its
lease (it stalled, another replica reaped and re-claimed the run) updates nothing,
and the caller rolls back whatever it loaded in that transaction. Functions only
execute/flush; callers commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.ingestion.connectors.base import LedgerEntry, Progress
from app.modules.tenants import get_tenant_config, tenant_timezones


@dataclass(frozen=True)
class ClaimedRun:
    id: uuid.UUID
    tenant_id: str
    source_id: uuid.UUID
    trigger: str
    attempt: int
    max_attempts: int
    window_start: date | None
    window_end: date | None
    files: list[str] | None
    rows_quarantined: int
    request_id: str | None  # of the request that queued it (manual runs, backfills)


@dataclass(frozen=True)
class SourceForRun:
    id: uuid.UUID
    tenant_id: str
    kind: str
    name: str
    config: dict[str, Any]
    secrets_ciphertext: str | None
    cursor: dict[str, Any]
    timezone: str


_CLAIM = text(
    """
    UPDATE ingestion_runs r
    SET status = 'running', lease_owner = :owner,
        lease_expires_at = clock_timestamp() + make_interval(secs => :lease_s),
        heartbeat_at = clock_timestamp(), attempt = r.attempt + 1, stage = 'starting',
        started_at = coalesce(r.started_at, now()),
        updated_at = now()
    WHERE r.id = (
        SELECT q.id FROM ingestion_runs q
        WHERE q.status = 'queued' AND q.next_attempt_at <= now()
          AND NOT EXISTS (
              SELECT 1 FROM ingestion_runs x
              WHERE x.source_id = q.source_id AND x.status = 'running')
        ORDER BY q.next_attempt_at, q.created_at
        FOR UPDATE SKIP LOCKED
        LIMIT 1)
    RETURNING r.id, r.tenant_id, r.source_id, r.trigger, r.attempt, r.max_attempts,
              r.window_start, r.window_end, r.files, r.rows_quarantined, r.request_id
    """
)


async def claim_next_run(session: AsyncSession, *, owner: str, lease_s: float) -> ClaimedRun | None:
    """Take the oldest due queued run whose source has nothing running, under a lease."""
    row = (await session.execute(_CLAIM, {"owner": owner, "lease_s": lease_s})).one_or_none()
    if row is None:
        return None
    return ClaimedRun(
        id=row.id,
        tenant_id=row.tenant_id,
        source_id=row.source_id,
        trigger=row.trigger,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        window_start=row.window_start,
        window_end=row.window_end,
        files=row.files,
        rows_quarantined=row.rows_quarantined,
        request_id=row.request_id,
    )


async def source_for_run(session: AsyncSession, source_id: uuid.UUID) -> SourceForRun | None:
    row = (
        await session.execute(
            text(
                """
                SELECT id, tenant_id, kind, name, config, secrets_ciphertext, "cursor"
                FROM ingestion_sources WHERE id = :id
                """
            ),
            {"id": source_id},
        )
    ).one_or_none()
    if row is None:
        return None
    return SourceForRun(
        id=row.id,
        tenant_id=row.tenant_id,
        kind=row.kind,
        name=row.name,
        config=row.config,
        secrets_ciphertext=row.secrets_ciphertext,
        cursor=row.cursor,
        timezone=(await get_tenant_config(session, row.tenant_id)).timezone,
    )


@dataclass(frozen=True)
class LeaseState:
    held: bool
    cancel_requested: bool


_RENEW_LEASE = text(
    """
    UPDATE ingestion_runs
    SET rows_loaded = rows_loaded + :loaded,
        rows_duplicate = rows_duplicate + :duplicates,
        rows_rejected = rows_rejected + :rejected,
        rows_quarantined = rows_quarantined + :quarantined,
        rows_read = GREATEST(rows_read, :rows_read),
        bytes_read = GREATEST(bytes_read, :bytes_read),
        stage = :stage, current_item = :item, heartbeat_at = clock_timestamp(),
        lease_expires_at = clock_timestamp() + make_interval(secs => :lease_s),
        updated_at = now()
    WHERE id = :id AND lease_owner = :owner AND status = 'running'
    RETURNING cancel_requested_at
    """
)


@dataclass
class BatchCounts:
    loaded: int = 0
    duplicates: int = 0
    rejected: int = 0
    quarantined: int = 0

    def add(self, other: BatchCounts) -> None:
        self.loaded += other.loaded
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.quarantined += other.quarantined


async def renew_lease(
    session: AsyncSession,
    run_id: uuid.UUID,
    *,
    owner: str,
    lease_s: float,
    progress: Progress,
    counts: BatchCounts | None = None,
) -> LeaseState:
    """Renew the run's lease and publish its progress (fenced by ``owner``); tells whether
    the lease is still ours and whether a cancel was asked for.

    The heartbeat calls it without ``counts``; a committed batch calls it with its counts,
    in the batch's own transaction, so the counts and the data commit together.
    """
    counts = counts or BatchCounts()
    row = (
        await session.execute(
            _RENEW_LEASE,
            {
                "id": run_id,
                "owner": owner,
                "lease_s": lease_s,
                "loaded": counts.loaded,
                "duplicates": counts.duplicates,
                "rejected": counts.rejected,
                "quarantined": counts.quarantined,
                "rows_read": progress.rows_read,
                "bytes_read": progress.bytes_read,
                "stage": progress.stage,
                "item": progress.current_item,
            },
        )
    ).one_or_none()
    if row is None:
        return LeaseState(held=False, cancel_requested=False)
    return LeaseState(held=True, cancel_requested=row.cancel_requested_at is not None)


async def patch_cursor(session: AsyncSession, source_id: uuid.UUID, patch: dict[str, Any]) -> None:
    await session.execute(
        text(
            'UPDATE ingestion_sources SET "cursor" = "cursor" || CAST(:patch AS jsonb) '
            "WHERE id = :id"
        ),
        {"id": source_id, "patch": msgspec.json.encode(patch).decode()},
    )


async def record_ledger(
    session: AsyncSession,
    *,
    tenant_id: str,
    source_id: uuid.UUID,
    run_id: uuid.UUID,
    entry: LedgerEntry,
    rows_loaded: int,
) -> None:
    await session.execute(
        text(
            """
            INSERT INTO ingestion_file_ledger
                (tenant_id, source_id, path, sha256, size, mtime, run_id, rows_loaded)
            VALUES (:tenant_id, :source_id, :path, :sha256, :size, :mtime, :run_id, :rows)
            ON CONFLICT (source_id, path, sha256) DO UPDATE
            SET run_id = EXCLUDED.run_id, imported_at = now(),
                rows_loaded = ingestion_file_ledger.rows_loaded + EXCLUDED.rows_loaded
            """
        ),
        {
            "tenant_id": tenant_id,
            "source_id": source_id,
            "path": entry.path,
            "sha256": entry.sha256,
            "size": entry.size,
            "mtime": entry.mtime,
            "run_id": run_id,
            "rows": rows_loaded,
        },
    )


async def imported_files(
    session: AsyncSession, source_id: uuid.UUID
) -> dict[str, list[LedgerEntry]]:
    rows = await session.execute(
        text("SELECT path, size, sha256, mtime FROM ingestion_file_ledger WHERE source_id = :id"),
        {"id": source_id},
    )
    out: dict[str, list[LedgerEntry]] = {}
    for path, size, digest, mtime in rows:
        out.setdefault(path, []).append(LedgerEntry(path, size, digest, mtime))
    return out


async def quarantine(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    if rows:
        await session.execute(
            text(
                """
                INSERT INTO ingestion_quarantine
                    (tenant_id, run_id, source_id, item, line_number, reason, raw)
                VALUES (:tenant_id, :run_id, :source_id, :item, :line_number, :reason, :raw)
                """
            ),
            rows,
        )


@dataclass(frozen=True)
class FinishedRun:
    tenant_id: str
    source_id: uuid.UUID
    attempt: int
    status: str
    finished_at: datetime
    rows_loaded: int
    rows_duplicate: int
    rows_rejected: int


_FINISH_RETURNING = """
    RETURNING tenant_id, source_id, attempt, status, finished_at,
              rows_loaded, rows_duplicate, rows_rejected
"""


async def finish_run(
    session: AsyncSession,
    run_id: uuid.UUID,
    *,
    owner: str | None,
    status: str,
    error_class: str | None = None,
    error_message: str | None = None,
) -> FinishedRun | None:
    """Record a final outcome; ``owner=None`` finishes a run this worker does not lease."""
    fence = "AND lease_owner = :owner AND status = 'running'" if owner else ""
    row = (
        await session.execute(
            text(
                f"""
                UPDATE ingestion_runs
                SET status = :status, finished_at = now(), updated_at = now(),
                    lease_owner = NULL, lease_expires_at = NULL, stage = :status,
                    error_class = :error_class, error_message = :error_message
                WHERE id = :id {fence}
                {_FINISH_RETURNING}
                """
            ),
            {
                "id": run_id,
                "owner": owner,
                "status": status,
                "error_class": error_class,
                "error_message": error_message,
            },
        )
    ).one_or_none()
    return None if row is None else FinishedRun(**row._asdict())


async def retry_run(
    session: AsyncSession,
    run_id: uuid.UUID,
    *,
    owner: str,
    delay_s: float,
    error_class: str,
    error_message: str,
) -> bool:
    """Put the run back in the queue for another attempt after ``delay_s``."""
    result = await session.execute(
        text(
            """
            UPDATE ingestion_runs
            SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                next_attempt_at = clock_timestamp() + make_interval(secs => :delay_s),
                stage = 'waiting to retry', error_class = :error_class,
                error_message = :error_message, updated_at = now()
            WHERE id = :id AND lease_owner = :owner AND status = 'running'
            """
        ),
        {
            "id": run_id,
            "owner": owner,
            "delay_s": delay_s,
            "error_class": error_class,
            "error_message": error_message,
        },
    )
    return bool(getattr(result, "rowcount", 0))


async def release_run(session: AsyncSession, run_id: uuid.UUID, *, owner: str) -> bool:
    """Give a run back to the queue at shutdown; the interrupted attempt does not count."""
    result = await session.execute(
        text(
            """
            UPDATE ingestion_runs
            SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                attempt = GREATEST(attempt - 1, 0), next_attempt_at = now(),
                stage = 'interrupted by shutdown', updated_at = now()
            WHERE id = :id AND lease_owner = :owner AND status = 'running'
            """
        ),
        {"id": run_id, "owner": owner},
    )
    return bool(getattr(result, "rowcount", 0))


@dataclass(frozen=True)
class ExpiredRun:
    id: uuid.UUID
    tenant_id: str
    attempt: int
    max_attempts: int
    lease_owner: str | None
    request_id: str | None


async def lock_expired_runs(session: AsyncSession, *, limit: int = 100) -> list[ExpiredRun]:
    rows = await session.execute(
        text(
            """
            SELECT id, tenant_id, attempt, max_attempts, lease_owner, request_id
            FROM ingestion_runs
            WHERE status = 'running' AND lease_expires_at < clock_timestamp()
            ORDER BY lease_expires_at
            FOR UPDATE SKIP LOCKED
            LIMIT :limit
            """
        ),
        {"limit": limit},
    )
    return [ExpiredRun(**r._asdict()) for r in rows]


async def requeue_expired(session: AsyncSession, run_id: uuid.UUID) -> None:
    await session.execute(
        text(
            """
            UPDATE ingestion_runs
            SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                next_attempt_at = now(), stage = 'rescued after lost lease',
                error_class = 'LeaseExpired',
                error_message = 'the worker running this run stopped renewing its lease',
                updated_at = now()
            WHERE id = :id AND status = 'running'
            """
        ),
        {"id": run_id},
    )


async def cancel_requested(session: AsyncSession, run_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    if not run_ids:
        return set()
    rows = await session.execute(
        text(
            "SELECT id FROM ingestion_runs WHERE id = ANY(:ids) AND cancel_requested_at IS NOT NULL"
        ),
        {"ids": run_ids},
    )
    return {r.id for r in rows}


@dataclass(frozen=True)
class SourceOutcome:
    name: str
    previous_failures: int  # the failure streak before this outcome


_RECORD_SOURCE_OUTCOME = text(
    """
    WITH previous AS (
        SELECT id, consecutive_failures FROM ingestion_sources WHERE id = :id FOR UPDATE)
    UPDATE ingestion_sources s
    SET last_run_id = :run_id, last_run_status = :status, last_run_at = :at,
        last_run_summary = CAST(:summary AS jsonb),
        consecutive_failures = CASE WHEN :status = 'failed'
            THEN previous.consecutive_failures + 1
            WHEN :status = 'succeeded' THEN 0 ELSE previous.consecutive_failures END
    FROM previous
    WHERE s.id = previous.id
    RETURNING s.name, previous.consecutive_failures AS previous_failures
    """
)


async def record_source_outcome(
    session: AsyncSession, source_id: uuid.UUID, run_id: uuid.UUID, finished: FinishedRun
) -> SourceOutcome:
    """Keep the source's "last run" summary and its failure streak (the one place it is
    kept) current; returns the source's name and the streak before this outcome."""
    summary = {
        "rows_loaded": finished.rows_loaded,
        "rows_duplicate": finished.rows_duplicate,
        "rows_rejected": finished.rows_rejected,
        "attempts": finished.attempt,
    }
    row = (
        await session.execute(
            _RECORD_SOURCE_OUTCOME,
            {
                "id": source_id,
                "run_id": run_id,
                "status": finished.status,
                "at": finished.finished_at,
                "summary": msgspec.json.encode(summary).decode(),
            },
        )
    ).one_or_none()
    if row is None:
        return SourceOutcome(name="(deleted source)", previous_failures=0)
    return SourceOutcome(name=row.name, previous_failures=row.previous_failures)


# --- the scheduler ----------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledSource:
    id: uuid.UUID
    tenant_id: str
    kind: str
    config: dict[str, Any]
    schedule_cron: str | None
    schedule_interval_s: int | None
    last_scheduled_at: datetime | None
    created_at: datetime
    timezone: str


async def scheduled_sources(session: AsyncSession) -> list[ScheduledSource]:
    """Enabled sources with a schedule, each with its tenant's timezone."""
    rows = await session.execute(
        text(
            """
            SELECT id, tenant_id, kind, config, schedule_cron, schedule_interval_s,
                   last_scheduled_at, created_at
            FROM ingestion_sources
            WHERE enabled AND (schedule_cron IS NOT NULL OR schedule_interval_s IS NOT NULL)
            """
        )
    )
    found = rows.all()
    timezones = await tenant_timezones(session, (r.tenant_id for r in found))
    # A tenant deleted since the first query has no timezone left: its sources go with it.
    return [
        ScheduledSource(**r._asdict(), timezone=timezones[r.tenant_id])
        for r in found
        if r.tenant_id in timezones
    ]


async def schedule_slot(
    session: AsyncSession,
    source: ScheduledSource,
    slot: datetime,
    window: tuple[date, date] | None,
    *,
    max_attempts: int,
) -> uuid.UUID | None:
    """Queue the run for ``slot`` (or fold it into a waiting one); returns a new run's id."""
    start, end = window if window else (None, None)
    folded = (
        await session.execute(
            text(
                """
                UPDATE ingestion_runs
                SET window_start = LEAST(window_start, :start),
                    window_end = GREATEST(window_end, :end), updated_at = now()
                WHERE id = (
                    SELECT id FROM ingestion_runs
                    WHERE source_id = :source_id AND status = 'queued' AND trigger = 'scheduled'
                    ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                RETURNING id
                """
            ),
            {"source_id": source.id, "start": start, "end": end},
        )
    ).scalar_one_or_none()
    run_id: uuid.UUID | None = None
    if folded is None:
        run_id = (
            await session.execute(
                text(
                    """
                    INSERT INTO ingestion_runs (id, tenant_id, source_id, trigger, window_start,
                        window_end, scheduled_for, max_attempts)
                    VALUES (:id, :tenant_id, :source_id, 'scheduled', :start, :end, :slot,
                        :max_attempts)
                    ON CONFLICT (source_id, scheduled_for) WHERE scheduled_for IS NOT NULL
                    DO NOTHING
                    RETURNING id
                    """
                ),
                {
                    "id": uuid.uuid4(),
                    "tenant_id": source.tenant_id,
                    "source_id": source.id,
                    "start": start,
                    "end": end,
                    "slot": slot,
                    "max_attempts": max_attempts,
                },
            )
        ).scalar_one_or_none()
    await session.execute(
        text(
            "UPDATE ingestion_sources SET last_scheduled_at = "
            "GREATEST(coalesce(last_scheduled_at, :slot), :slot) WHERE id = :id"
        ),
        {"id": source.id, "slot": slot},
    )
    return run_id
