"""The scheduler: each slot once across replicas, missed slots collapse, tenant timezones."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import text

from app.core.db import Database
from app.modules.ingestion import schemas
from app.modules.ingestion.scheduler import ScheduledSource, Scheduler, latest_slot
from tests.fixtures.ingestion import IngestKit, wait_until


def _source(**fields: object) -> ScheduledSource:
    base: dict[str, object] = {
        "id": uuid.uuid4(),
        "tenant_id": "acme",
        "kind": "synthetic",
        "config": {},
        "schedule_cron": None,
        "schedule_interval_s": None,
        "last_scheduled_at": None,
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "timezone": "UTC",
    }
    base.update(fields)
    return ScheduledSource(**base)  # type: ignore[arg-type]


def test_cron_slots_are_evaluated_in_the_tenant_timezone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    source = _source(schedule_cron="0 3 * * *", timezone="Asia/Tokyo")
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # 21:00 in Tokyo
    slot = latest_slot(source, now, tokyo)
    # 03:00 Tokyo on 10 March is 18:00 UTC on 9 March.
    assert slot == datetime(2026, 3, 9, 18, 0, tzinfo=UTC)


def test_missed_slots_collapse_into_the_latest_one() -> None:
    now = datetime(2026, 3, 10, 12, 30, 10, tzinfo=UTC)
    source = _source(schedule_cron="*/5 * * * *", last_scheduled_at=now - timedelta(days=3))
    assert latest_slot(source, now, ZoneInfo("UTC")) == datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
    # Nothing new is due once the latest slot was scheduled.
    done = _source(schedule_cron="*/5 * * * *", last_scheduled_at=now.replace(second=0))
    assert latest_slot(done, now, ZoneInfo("UTC")) is None


def test_interval_slots_align_to_the_epoch() -> None:
    now = datetime(2026, 3, 10, 12, 7, 30, tzinfo=UTC)
    source = _source(schedule_interval_s=600, last_scheduled_at=now - timedelta(hours=5))
    assert latest_slot(source, now, ZoneInfo("UTC")) == datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


async def _backdate(ingest: IngestKit, source_id: uuid.UUID, hours: int) -> None:
    async with ingest.db.session(all_tenants=True) as session:
        await session.execute(
            text(
                "UPDATE ingestion_sources"
                " SET last_scheduled_at = now() - make_interval(hours => :h) WHERE id = :id"
            ),
            {"id": source_id, "h": hours},
        )
        await session.commit()


async def test_replicas_ticking_at_once_create_one_run_per_slot(ingest: IngestKit) -> None:
    await ingest.tenant()
    source = await ingest.source(schedule=schemas.Schedule(cron="0 * * * *"))
    await _backdate(ingest, source.id, 30)
    other = Database.from_settings(ingest.settings, ingest.settings.database_url or "")
    try:
        schedulers = [Scheduler(ingest.db, ingest.settings), Scheduler(other, ingest.settings)]
        now = datetime.now(UTC)
        created = await asyncio.gather(*(s.tick(now) for s in schedulers for _ in range(3)))
    finally:
        await other.dispose()
    assert sum(created) == 1
    runs = await ingest.scalar(
        "SELECT count(*) FROM ingestion_runs WHERE source_id = :s", s=source.id
    )
    assert runs == 1
    slot = await ingest.scalar(
        "SELECT scheduled_for FROM ingestion_runs WHERE source_id = :s", s=source.id
    )
    assert slot == now.replace(minute=0, second=0, microsecond=0)


async def test_two_runners_on_separate_engines_run_every_slot_exactly_once(
    ingest: IngestKit,
) -> None:
    await ingest.tenant()
    sources = [
        await ingest.source(
            config={"seed": i, "sessions_per_day": 3, "batch_rows": 5000},
            schedule=schemas.Schedule(interval_s=1),
        )
        for i in range(2)
    ]
    dbs = [
        Database.from_settings(ingest.settings, ingest.settings.database_url or "") for _ in "ab"
    ]
    schedulers = [Scheduler(db, ingest.settings) for db in dbs]
    try:
        async with (
            ingest.runner(ingest_concurrency=4) as a,
            ingest.runner(ingest_concurrency=4) as b,
        ):
            for s in schedulers:
                s._on_queued = lambda: (a.wake(), b.wake())
            tasks = [asyncio.create_task(s.run()) for s in schedulers]

            async def enough_slots() -> bool:
                count = await ingest.scalar(
                    "SELECT count(*) FROM ingestion_runs WHERE trigger = 'scheduled'"
                )
                return int(count) >= 6

            await wait_until(enough_slots, timeout_s=60)
            for s in schedulers:
                s.stop()
            await asyncio.gather(*tasks)

            async def drained() -> bool:
                busy = await ingest.scalar(
                    "SELECT count(*) FROM ingestion_runs WHERE status IN ('queued', 'running')"
                )
                return int(busy) == 0

            await wait_until(drained, timeout_s=120)
    finally:
        for db in dbs:
            await db.dispose()
    async with ingest.db.session(all_tenants=True) as session:
        rows = (
            await session.execute(
                text(
                    "SELECT source_id, scheduled_for, status, attempt, lease_owner"
                    " FROM ingestion_runs WHERE trigger = 'scheduled'"
                )
            )
        ).all()
    slots = [(r.source_id, r.scheduled_for) for r in rows]
    assert len(slots) == len(set(slots))
    assert all(r.status == "succeeded" and r.attempt == 1 for r in rows), rows
    assert {r.source_id for r in rows} == {s.id for s in sources}


async def test_created_source_does_not_catch_up_on_past_slots(ingest: IngestKit) -> None:
    await ingest.tenant()
    await ingest.source(schedule=schemas.Schedule(cron="0 0 1 1 *"))
    assert await Scheduler(ingest.db, ingest.settings).tick() == 0


async def test_due_sources_carry_their_own_tenants_timezone(ingest: IngestKit) -> None:
    from app.modules.ingestion.repository import scheduled_sources

    await ingest.tenant("tokyo", timezone="Asia/Tokyo")
    await ingest.tenant("berlin", timezone="Europe/Berlin")
    hourly = schemas.Schedule(cron="0 * * * *")
    made = {
        (await ingest.source(tenant_id=tenant, schedule=hourly)).id: zone
        for tenant, zone in (("tokyo", "Asia/Tokyo"), ("berlin", "Europe/Berlin"))
    }
    made[(await ingest.source(tenant_id="tokyo", schedule=hourly)).id] = "Asia/Tokyo"
    await ingest.source(tenant_id="berlin")  # no schedule: not listed
    async with ingest.db.session(all_tenants=True) as session:
        due = await scheduled_sources(session)
    assert {s.id: s.timezone for s in due} == made
