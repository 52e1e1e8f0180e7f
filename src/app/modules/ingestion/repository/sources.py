"""The SQL of a source as an import sees it: its config, its cursor, its file ledger,
its quarantine, and the last-run summary and failure streak (kept here only).
Functions only execute/flush; callers commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.ingestion.connectors.base import LedgerEntry
from app.modules.ingestion.repository.runs import FinishedRun


@dataclass(frozen=True)
class SourceForRun:
    id: uuid.UUID
    tenant_id: str
    kind: str
    name: str
    config: dict[str, Any]
    secrets_ciphertext: str | None
    cursor: dict[str, Any]


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
    )


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
