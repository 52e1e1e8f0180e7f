"""The event store: canonical validation, idempotent loading, data versions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from app.core.db import Database
from app.modules.events import (
    CanonicalEvent,
    DataVersion,
    EventLoad,
    RowRejected,
    event_id_for,
    get_data_version,
    load_events,
    to_canonical,
)
from app.modules.tenants import TenantCreate, create_tenant
from tests.fixtures.ingestion import fast_settings


@pytest.fixture
async def db(database_url: str, clean_tables: None) -> AsyncIterator[Database]:
    database = Database.from_settings(fast_settings(database_url), database_url)
    async with database.session(all_tenants=True) as session:
        await create_tenant(session, TenantCreate(id="acme", name="Acme"))
        await session.commit()
    yield database
    await database.dispose()


def _event(i: int, when: str = "2026-01-05T10:00:00+00:00", **fields: object) -> CanonicalEvent:
    return to_canonical(
        {"event_id": f"e{i}", "event_name": "page_view", "occurred_at": when, **fields}
    )


def test_valid_row_becomes_an_event_in_utc() -> None:
    event = to_canonical(
        {
            "event_id": "a",
            "event_name": "purchase",
            "occurred_at": "2026-01-05T12:00:00+02:00",
            "revenue": "19.90",
            "properties": {"coupon": "X"},
        }
    )
    assert event.occurred_at == datetime(2026, 1, 5, 10, tzinfo=UTC)
    assert event.revenue == Decimal("19.90")
    assert event.properties == {"coupon": "X"}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"event_name": "x"}, "missing"),
        ({"event_id": "a", "event_name": "x", "occurred_at": "yesterday"}, "occurred_at"),
        ({"event_id": "a", "event_name": "x", "occurred_at": "2026-01-05T10:00:00"}, "timezone"),
        ({"event_id": "a", "event_name": "", "occurred_at": "2026-01-05T10:00:00Z"}, "event_name"),
        ({"event_id": "a", "event_name": "x", "occurred_at": "2999-01-01T00:00:00Z"}, "range"),
        (
            {
                "event_id": "a",
                "event_name": "x",
                "occurred_at": "2026-01-05T10:00:00Z",
                "revenue": "NaN",
            },
            "revenue",
        ),
        (
            {
                "event_id": "a",
                "event_name": "x",
                "occurred_at": "2026-01-05T10:00:00Z",
                "page_path": "a\x00b",
            },
            "NUL",
        ),
        (
            {
                "event_id": "a",
                "event_name": "x",
                "occurred_at": "2026-01-05T10:00:00Z",
                "engagement_time_msec": "lots",
            },
            "engagement_time_msec",
        ),
    ],
)
def test_bad_rows_are_rejected_with_a_reason(row: dict[str, object], reason: str) -> None:
    with pytest.raises(RowRejected) as info:
        to_canonical(row)
    assert reason in info.value.reason


def test_event_id_is_derived_deterministically_when_missing() -> None:
    row = {"event_name": "page_view", "occurred_at": "2026-01-05T10:00:00Z", "user_id": "u1"}
    assert to_canonical(row).event_id == to_canonical(dict(row)).event_id
    assert event_id_for("a", 1) != event_id_for("a", 2)


async def test_loading_twice_inserts_once_and_bumps_the_version_once(db: Database) -> None:
    events = [_event(i) for i in range(5)] + [_event(9, "2026-01-06T23:59:00+00:00")]
    async with db.session(all_tenants=True) as session:
        assert await get_data_version(session, "acme") == DataVersion(version=0, fresh_until=None)
        first = await load_events(session, "acme", events, source_id=None)
        await session.commit()
    assert (first.inserted, first.duplicates) == (6, 0)
    assert first.affected_days == {date(2026, 1, 5), date(2026, 1, 6)}
    async with db.session(all_tenants=True) as session:
        version = await get_data_version(session, "acme")
        again = await load_events(session, "acme", events, source_id=None)
        await session.commit()
        after = await get_data_version(session, "acme")
    assert version.version == 1
    assert version.fresh_until == datetime(2026, 1, 6, 23, 59, tzinfo=UTC)
    assert (again.inserted, again.duplicates, again.affected_days) == (0, 6, frozenset())
    assert after == version


async def test_duplicates_inside_one_batch_count_once(db: Database) -> None:
    async with db.session(all_tenants=True) as session:
        result = await load_events(session, "acme", [_event(1), _event(1)], source_id=None)
        await session.commit()
    assert (result.inserted, result.duplicates) == (1, 1)


async def test_a_rolled_back_load_leaves_nothing(db: Database) -> None:
    async with db.session(all_tenants=True) as session:
        await load_events(session, "acme", [_event(i) for i in range(3)], source_id=None)
        await session.rollback()
    async with db.session(all_tenants=True) as session:
        again = await load_events(session, "acme", [_event(i) for i in range(3)], source_id=None)
        await session.commit()
        version = await get_data_version(session, "acme")
    assert again.inserted == 3
    assert version.version == 1


async def test_large_batch_loads_in_slices(db: Database) -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    events = [_event(i, (start + timedelta(seconds=i)).isoformat()) for i in range(3500)]
    async with db.session(all_tenants=True) as session:
        result = await load_events(session, "acme", events, source_id=None)
        await session.commit()
    assert result.inserted == 3500


_ROLLUPS = text(
    "SELECT grain, dim, bucket, value, events, pageviews, users_count, sessions_count,"
    " users_hll, sessions_hll, engaged_hll FROM stats_rollups WHERE tenant_id = :t"
    " ORDER BY grain, dim, bucket, value"
)


async def test_one_transaction_of_many_loads_summarises_once_and_the_same(db: Database) -> None:
    """A file loaded in several batches: the rollups are built at finish(), once, and
    equal those of the same events loaded in one go (for another tenant)."""
    start = datetime(2026, 1, 5, 22, tzinfo=UTC)
    events = [
        _event(
            i,
            (start + timedelta(minutes=7 * i)).isoformat(),
            user_id=f"u{i % 11}",
            session_id=f"s{i % 23}",
            event_name="page_view" if i % 3 else "scroll",
            page_path=f"/p{i % 4}",
        )
        for i in range(600)
    ]
    async with db.session(all_tenants=True) as session:
        await create_tenant(session, TenantCreate(id="beta", name="Beta"))
        await load_events(session, "beta", events, source_id=None)
        await session.commit()
    async with db.session(all_tenants=True) as session:
        load = EventLoad(session, "acme", source_id=None)
        results = [await load.add(events[i : i + 250]) for i in range(0, len(events), 250)]
        pending = (await session.execute(_ROLLUPS, {"t": "acme"})).all()
        await load.finish()
        await load.finish()  # nothing new: no second refresh, no second version bump
        await session.commit()
    async with db.session(all_tenants=True) as session:
        built = (await session.execute(_ROLLUPS, {"t": "acme"})).all()
        expected = (await session.execute(_ROLLUPS, {"t": "beta"})).all()
        version = await get_data_version(session, "acme")
    assert [r.inserted for r in results] == [250, 250, 100]
    assert pending == []
    assert built == expected
    assert sum(r.events for r in built if r.grain == 0) == 600
    assert version.version == 1
    assert version.fresh_until == start + timedelta(minutes=7 * 599)


def test_events_stay_out_of_the_cyclic_garbage_collector() -> None:
    import gc

    event = _event(1, properties={"nested": {"list": [1, 2]}})
    assert not gc.is_tracked(event)
