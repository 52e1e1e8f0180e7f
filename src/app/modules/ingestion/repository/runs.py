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

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.ingestion.connectors.base import Progress


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
