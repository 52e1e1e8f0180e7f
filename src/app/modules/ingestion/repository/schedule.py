"""The SQL of the scheduler: sources with a schedule, and a slot queued once (or folded
into a waiting run). Functions only execute/flush; callers commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.tenants import tenant_timezones


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
