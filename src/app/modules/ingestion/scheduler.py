"""The internal scheduler: turns due schedule slots into queued runs, once per slot.

Every ``scheduler_interval_s`` it looks at enabled sources with a schedule (a cron
expression evaluated in the tenant's timezone, or an interval in seconds aligned
to the Unix epoch) and computes the latest slot that is due. Only that slot is
queued, so slots missed during downtime collapse into one run. The run is inserted
with the unique key (source, slot) and ``ON CONFLICT DO NOTHING``: any number of
replicas can tick at once and each slot still exists once. When a scheduled run
of the source is still waiting in the queue, the new slot is folded into it
(its date window widened) instead of queuing another.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import structlog
from cronsim import CronSim, CronSimError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import Database
from app.core.settings import Settings
from app.modules.ingestion.connectors import get_connector
from app.modules.ingestion.timezones import zone
from app.modules.tenants import tenant_timezones

log = structlog.get_logger("app.ingestion.scheduler")

_CRON_LOOKBACK = timedelta(days=8)
_MAX_CRON_STEPS = 20_000


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


def latest_slot(source: ScheduledSource, now: datetime, tz: Any) -> datetime | None:
    """The newest slot at or before ``now`` that is after the last one scheduled."""
    since = source.last_scheduled_at or source.created_at
    if source.schedule_interval_s:
        step = source.schedule_interval_s
        slot = datetime.fromtimestamp(int(now.timestamp()) // step * step, tz=UTC)
        return slot if slot > since else None
    if not source.schedule_cron:
        return None
    start = max(since, now - _CRON_LOOKBACK).astimezone(tz)
    latest: datetime | None = None
    for steps, candidate in enumerate(CronSim(source.schedule_cron, start)):
        if candidate > now or steps > _MAX_CRON_STEPS:
            break
        latest = candidate
    return None if latest is None else latest.astimezone(UTC)


def validate_cron(expression: str) -> str | None:
    """None if ``expression`` is a valid cron expression, else the reason."""
    try:
        next(iter(CronSim(expression, datetime.now(UTC))))
    except (CronSimError, StopIteration, ValueError) as exc:
        return str(exc) or "invalid cron expression"
    return None


async def _due_sources(session: AsyncSession) -> list[ScheduledSource]:
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


class Scheduler:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        on_queued: Any = None,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.interval_s = settings.scheduler_interval_s
        self._on_queued = on_queued
        self._stop = asyncio.Event()
        # Set by whoever must finish first (the development launcher's bootstrap).
        self._gate = gate

    async def _wait_for_gate(self) -> None:
        if self._gate is None or self._gate.is_set():
            return
        waits = {asyncio.ensure_future(self._gate.wait()), asyncio.ensure_future(self._stop.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def run(self) -> None:
        await self._wait_for_gate()
        log.info("scheduler.started", interval_s=self.interval_s)
        while not self._stop.is_set():
            try:
                async with asyncio.timeout(max(30.0, self.interval_s)):
                    await self.tick()
            except Exception:
                log.exception("scheduler.tick_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    async def tick(self, now: datetime | None = None) -> int:
        """Queue every due slot; returns how many runs were created."""
        now = now or datetime.now(UTC)
        async with self.db.session(all_tenants=True) as session:
            sources = await _due_sources(session)
        created = 0
        for source in sources:
            tz = await zone(source.timezone)
            slot = latest_slot(source, now, tz)
            if slot is None:
                continue
            connector = get_connector(source.kind)
            window = None
            if connector is not None:
                try:
                    config = msgspec.convert(source.config, connector.config_type)
                    dates = connector.default_window(config, slot.astimezone(tz).date())
                    window = (dates.start, dates.end) if dates else None
                except msgspec.ValidationError:
                    log.warning("scheduler.invalid_config", source_id=str(source.id))
            async with self.db.session(source.tenant_id) as session:
                run_id = await schedule_slot(
                    session,
                    source,
                    slot,
                    window,
                    max_attempts=self.settings.ingest_max_attempts,
                )
                await session.commit()
            if run_id is not None:
                created += 1
                log.info(
                    "run.scheduled",
                    run_id=str(run_id),
                    tenant_id=source.tenant_id,
                    source_id=str(source.id),
                    slot=slot.isoformat(),
                )
        if created and self._on_queued is not None:
            self._on_queued()
        return created
