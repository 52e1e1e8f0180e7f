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
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import structlog
from cronsim import CronSim, CronSimError

from app.core.db import Database
from app.core.settings import Settings
from app.modules.ingestion import repository
from app.modules.ingestion.connectors import get_connector
from app.modules.ingestion.repository import ScheduledSource
from app.modules.ingestion.timezones import zone

log = structlog.get_logger("app.ingestion.scheduler")

_CRON_LOOKBACK = timedelta(days=8)
_MAX_CRON_STEPS = 20_000


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
            sources = await repository.scheduled_sources(session)
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
                run_id = await repository.schedule_slot(
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
