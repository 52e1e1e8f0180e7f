"""The weekly digest: due once per tenant and week at the tenant's day and hour (its
timezone), built from the dashboard's query engine, queued through the outbox.

Exactly once across replicas: the (tenant, week) row in ``notification_digests`` is
inserted with ``ON CONFLICT DO NOTHING`` in the same transaction as the digest's
outbox rows, so of several schedulers only the one whose insert went in builds and
queues it; if building fails, the whole transaction rolls back and the next tick
tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import Database
from app.core.errors import is_database_unavailable
from app.modules.dashboard import StatsQuery, StatsResult, run_query
from app.modules.notifications import repository
from app.modules.notifications.models import NotificationPreferences
from app.modules.notifications.service import enqueue_email
from app.modules.notifications.templates import DigestView, render_digest
from app.modules.notifications.tenancy import TenantProfile, tenant_profile

log = structlog.get_logger("app.notifications.digest")

# A digest whose slot passed longer ago than this (the app was down) is skipped, not sent late.
CATCH_UP = timedelta(hours=24)
# Sent and failed emails are kept this long for the outbox API, then deleted.
OUTBOX_RETENTION = timedelta(days=90)
PURGE_EVERY = timedelta(hours=1)
SUMMARY_METRICS = ("users", "sessions", "pageviews", "conversions", "revenue")
TOP = 5


@dataclass(frozen=True, slots=True)
class Slot:
    """One digest occurrence: when it is due and which days it covers (tenant-local)."""

    due_at: datetime  # UTC
    week_start: date  # Monday of the local week the slot falls in: the unique key
    first_day: date  # the 7 full days before the slot's day
    last_day: date

    @property
    def previous(self) -> tuple[date, date]:
        return self.first_day - timedelta(days=7), self.last_day - timedelta(days=7)


def latest_slot(now: datetime, zone: tzinfo, weekday: int, hour: int) -> Slot:
    """The most recent slot at or before ``now`` for an ISO ``weekday`` and ``hour``."""
    local_now = now.astimezone(zone)
    day = local_now.date() - timedelta(days=(local_now.isoweekday() - weekday) % 7)
    due_local = datetime.combine(day, time(hour), tzinfo=zone)
    if due_local > local_now:
        day -= timedelta(days=7)
        due_local = datetime.combine(day, time(hour), tzinfo=zone)
    return Slot(
        due_at=due_local.astimezone(UTC),
        week_start=day - timedelta(days=day.weekday()),
        first_day=day - timedelta(days=7),
        last_day=day - timedelta(days=1),
    )


async def build_digest(
    session: AsyncSession, tenant: TenantProfile, first_day: date, last_day: date
) -> DigestView:
    """Figures for ``first_day..last_day`` against the 7 days before, via ``run_query``."""
    span = [first_day.isoformat(), last_day.isoformat()]
    previous = [
        (first_day - timedelta(days=7)).isoformat(),
        (last_day - timedelta(days=7)).isoformat(),
    ]
    zone = tenant.timezone.key
    totals = await run_query(
        session,
        tenant.id,
        StatsQuery(metrics=list(SUMMARY_METRICS), date_range=span, compare=previous, timezone=zone),
    )
    pages = await run_query(
        session,
        tenant.id,
        StatsQuery(
            metrics=["pageviews"],
            dimensions=["page_path"],
            date_range=span,
            timezone=zone,
            order_by=[["pageviews", "desc"], ["page_path", "asc"]],
            limit=TOP,
        ),
    )
    sources = await run_query(
        session,
        tenant.id,
        StatsQuery(
            metrics=["sessions"],
            dimensions=["source"],
            date_range=span,
            timezone=zone,
            order_by=[["sessions", "desc"], ["source", "asc"]],
            limit=TOP,
        ),
    )
    return DigestView(
        tenant_name=tenant.name,
        first_day=first_day,
        last_day=last_day,
        current={m: totals.totals.get(m) for m in SUMMARY_METRICS},
        previous={m: _previous(totals).get(m) for m in SUMMARY_METRICS},
        change={m: _change(totals).get(m) for m in SUMMARY_METRICS},
        top_pages=_top(pages, "page_path", "pageviews"),
        top_sources=_top(sources, "source", "sessions"),
        approximate={
            metric: bound.relative_error
            for metric, bound in totals.meta.approximate.items()
            if metric in SUMMARY_METRICS
        },
    )


def _previous(result: StatsResult) -> dict[str, float | int | None]:
    return dict(result.comparison.totals) if result.comparison else {}


def _change(result: StatsResult) -> dict[str, float | int | None]:
    return dict(result.comparison.change) if result.comparison else {}


def _top(result: StatsResult, dimension: str, metric: str) -> list[tuple[str, float | int]]:
    rows: list[tuple[str, float | int]] = []
    for row in result.rows[:TOP]:
        value = row.metrics.get(metric)
        if value:
            rows.append((row.dimensions.get(dimension, ""), value))
    return rows


async def queue_digest_if_due(
    session: AsyncSession,
    preferences: NotificationPreferences,
    now: datetime,
    *,
    already_done: frozenset[tuple[str, date]] = frozenset(),
) -> bool:
    """Queue this week's digest for one tenant if due and not yet done (flush only)."""
    tenant = await tenant_profile(session, preferences.tenant_id)
    slot = latest_slot(now, tenant.timezone, preferences.digest_weekday, preferences.digest_hour)
    if now - slot.due_at > CATCH_UP or (tenant.id, slot.week_start) in already_done:
        return False
    claimed = await repository.claim_digest_slot(
        session, tenant_id=tenant.id, week_start=slot.week_start, scheduled_for=slot.due_at
    )
    if not claimed:
        return False
    view = await build_digest(session, tenant, slot.first_day, slot.last_day)
    queued = await enqueue_email(
        session,
        tenant_id=tenant.id,
        kind="weekly_digest",
        event_key=slot.week_start.isoformat(),
        recipients=preferences.recipients,
        message=render_digest(view),
    )
    log.info(
        "notifications.digest_queued",
        tenant_id=tenant.id,
        week_start=slot.week_start.isoformat(),
        queued=queued,
    )
    return True


async def run_digest_tick(db: Database, now: datetime | None = None) -> int:
    """One pass over the tenants that want a digest, each in its own transaction.

    Returns how many digests this call queued (0 when another replica got there first).
    """
    now = now or datetime.now(UTC)
    async with db.session(all_tenants=True) as session:
        candidates = await repository.tenants_with_digest(session)
        done = await repository.recent_digest_slots(
            session, since=now - CATCH_UP - timedelta(days=7)
        )
    queued = 0
    for preferences in candidates:
        try:
            async with db.session(preferences.tenant_id) as session:
                if await queue_digest_if_due(session, preferences, now, already_done=done):
                    await session.commit()
                    queued += 1
        except Exception as exc:
            if is_database_unavailable(exc):
                raise
            # One tenant's broken digest must not stop the others; it is retried next tick.
            log.exception("notifications.digest_failed", tenant_id=preferences.tenant_id)
    return queued


async def purge_old_emails(db: Database, now: datetime | None = None) -> int:
    """Delete sent/failed emails older than :data:`OUTBOX_RETENTION`, in small batches."""
    cutoff = (now or datetime.now(UTC)) - OUTBOX_RETENTION
    total = 0
    while True:
        async with db.session(all_tenants=True) as session:
            deleted = await repository.purge_finished(session, older_than=cutoff, limit=1000)
            await session.commit()
        total += deleted
        if deleted < 1000:
            break
    if total:
        log.info("notifications.outbox_purged", deleted=total)
    return total


class DigestScheduler:
    """Runs :func:`run_digest_tick` every ``interval_s``, and the outbox purge on the first
    tick after start-up, then on the first tick at least an hour after the last purge."""

    def __init__(
        self, db: Database, *, interval_s: float, on_queued: Callable[[], None] | None = None
    ) -> None:
        self.db = db
        self.interval_s = interval_s
        self.on_queued = on_queued
        self._stopping = asyncio.Event()
        self._purged_at: datetime | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        log.info("notifications.digest_scheduler_started", interval_s=self.interval_s)
        while not self._stopping.is_set():
            try:
                if await run_digest_tick(self.db) and self.on_queued is not None:
                    self.on_queued()
                now = datetime.now(UTC)
                if self._purged_at is None or now - self._purged_at >= PURGE_EVERY:
                    await purge_old_emails(self.db, now)
                    self._purged_at = now
            except Exception as exc:
                if is_database_unavailable(exc):
                    log.warning("notifications.digest_db_unavailable", error=type(exc).__name__)
                else:
                    log.exception("notifications.digest_tick_failed")
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._stopping.wait()
            except TimeoutError:
                pass
