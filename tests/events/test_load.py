"""The event store: canonical validation, idempotent loading, data versions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import event, text

from app.core.db import Database
from app.modules.events import (
    CanonicalEvent,
    DataVersion,
    EventLoad,
    LoadLockTimeout,
    RowRejected,
    event_id_for,
    get_data_version,
    load_events,
    to_canonical,
)
from app.modules.events.rollups import rebuild_rollups
from app.modules.events.schema import MAX_TEXT
from app.modules.events.sketches import RELATIVE_ERROR, merge_sketches
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


async def test_a_load_waits_for_the_tenant_lock_with_a_deadline_and_says_so(
    db: Database,
) -> None:
    """#17: a load stuck behind another load of the tenant fails (transiently) when its
    wait passes the deadline, and reports that it is waiting while it waits."""
    waited: list[str] = []
    async with db.session() as holder:
        first = EventLoad(holder, "acme", source_id=None)
        await first.add([_event(1)])  # holds the tenant's load turn until it ends
        async with db.session() as session:
            second = EventLoad(
                session,
                "acme",
                source_id=None,
                lock_wait_s=0.3,
                on_lock_wait=lambda: waited.append("waiting"),
            )
            with pytest.raises(LoadLockTimeout, match=r"more than 0\.3 s"):
                await second.add([_event(2)])
            await session.rollback()
        await holder.commit()
    assert waited == ["waiting"]  # said once, not once per poll
    assert isinstance(LoadLockTimeout("x"), TimeoutError)  # transient for the runner
    async with db.session() as session:
        third = EventLoad(session, "acme", source_id=None, lock_wait_s=0.3)
        result = await third.add([_event(2)])
        await third.finish()
        await session.commit()
    assert result.inserted == 1


async def test_heavy_statements_take_an_import_slot_and_the_lock_wait_does_not(
    db: Database,
) -> None:
    """#15: loads share the process's slots for heavy statements (PULSE_INGEST_DB_SLOTS).
    Every statement that writes events, staging or rollups runs holding a slot; waiting
    for the tenant's load lock does not. With one slot and two loads of one tenant, the
    second waits for the lock while the first still gets the slot for its rollups and
    commits: no deadlock (the second would otherwise fail after its lock wait)."""
    slot = asyncio.Semaphore(1)
    seen: list[tuple[str, bool]] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append((statement, slot.locked()))

    waiting = asyncio.Event()
    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        async with db.session() as holder:
            first = EventLoad(holder, "acme", source_id=None, turns=slot)
            await first.add([_event(1)])  # holds the tenant's load lock until commit
            async with db.session() as session:
                second = EventLoad(
                    session,
                    "acme",
                    source_id=None,
                    turns=slot,
                    lock_wait_s=120,
                    on_lock_wait=waiting.set,
                )
                added = asyncio.create_task(second.add([_event(2)]))
                await waiting.wait()
                await first.finish()  # needs the slot while the second waits
                await holder.commit()
                result = await added
                await second.finish()
                await session.commit()
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)
    assert result.inserted == 1
    heavy = [
        held
        for statement, held in seen
        if any(
            word in statement
            for word in ("INSERT INTO events", "stats_rollups", "events_staging", "work_mem")
        )
    ]
    assert len(heavy) >= 6
    assert all(heavy)
    polls = [held for statement, held in seen if "pg_try_advisory_xact_lock" in statement]
    assert len(polls) >= 3
    assert polls[:2] == [False, False]
    async with db.session() as session:
        count = await session.execute(text("SELECT count(*) FROM events WHERE tenant_id='acme'"))
        assert count.scalar() == 2


def test_text_limits_name_the_field_whatever_the_other_fields_hold() -> None:
    """Each text field may hold MAX_TEXT characters, however long the row is in all;
    one field over the limit is rejected by name."""
    full = "x" * MAX_TEXT
    event = _event(1, page_path=full, page_title=full, referrer=full, city="\x1b\u2028é")
    assert (event.page_path, event.city) == (full, "\x1b\u2028é")
    with pytest.raises(RowRejected) as info:
        _event(1, page_path="short", page_title=full + "y")
    assert info.value.reason == "page_title is too long or contains NUL"
    with pytest.raises(RowRejected) as info:
        _event(1, page_path=full, campaign="a\x00")
    assert info.value.reason == "campaign is too long or contains NUL"


@pytest.mark.parametrize(
    "awkward",
    [
        'a\tb\nc\\d"e\r',  # every character COPY's text format escapes, and a quote
        "back\\slash only",  # printable, but still escaped
        "\x1b[0m \x0b\x0c \u2028 \u00e9 \U0001f600",  # not printable, not escaped by COPY
        "plain",
    ],
)
async def test_copy_text_round_trips_awkward_values(db: Database, awkward: str) -> None:
    """Tabs, newlines, backslashes, quotes, control characters and JSON survive the COPY
    text format, in every kind of column."""
    event = _event(
        1,
        page_path=awkward,
        city=awkward,
        properties={"k": awkward, "n": [1, 2]},
        revenue="12.50",
        session_engaged=False,
        engagement_time_msec=0,
    )
    async with db.session() as session:
        await load_events(session, "acme", [event], source_id=None)
        await session.commit()
        row = (
            await session.execute(
                text(
                    "SELECT page_path, city, properties, revenue, session_engaged,"
                    " engagement_time_msec, user_id FROM events WHERE tenant_id = 'acme'"
                )
            )
        ).one()
    assert row.page_path == awkward
    assert row.city == awkward
    assert row.properties == {"k": awkward, "n": [1, 2]}
    assert row.revenue == Decimal("12.50")
    assert row.session_engaged is False
    assert row.engagement_time_msec == 0
    assert row.user_id is None


_ALL_ROLLUPS = text(
    "SELECT grain, dim, bucket, value, events, pageviews, new_users, conversions,"
    " engagement_msec, revenue, users_count, sessions_count,"
    " users_hll, sessions_hll, engaged_hll, converting_hll"
    " FROM stats_rollups WHERE tenant_id = :t ORDER BY grain, dim, bucket, value"
)


def _estimate(blob: bytes | None) -> float:
    return merge_sketches([blob]).estimate if blob is not None else 0.0


async def test_incremental_rollups_equal_a_full_rebuild_after_many_loads(db: Database) -> None:
    """Loads committed one after another add to the rollups (no day is re-read); the
    result equals a rebuild from the events table: sums and exact counts equal, sketch
    estimates within the bound. A late event that makes an old session engaged updates
    that session's older days, and overlapping users are not counted twice."""
    async with db.session() as session:
        await create_tenant(session, TenantCreate(id="kol", name="Kol", timezone="Asia/Kolkata"))
        await session.commit()
    start = datetime(2026, 1, 5, 17, tzinfo=UTC)  # near the local midnight (UTC+5:30)

    def ev(i: int, minutes: int, **fields: object) -> CanonicalEvent:
        fields.setdefault("event_name", "scroll")
        return to_canonical(
            {
                "event_id": f"k{i}",
                "occurred_at": (start + timedelta(minutes=minutes)).isoformat(),
                **fields,
            }
        )

    loads = [
        # One event per session: nobody engaged yet.
        [
            ev(i, 9 * i, user_id=f"u{i % 7}", session_id=f"s{i}", page_path=f"/p{i % 3}")
            for i in range(40)
        ],
        # The same users again, later, in new sessions and on the next local day.
        [
            ev(
                100 + i,
                400 + 13 * i,
                user_id=f"u{i % 9}",
                session_id=f"t{i}",
                country="IN" if i % 2 else None,
                event_name="page_view",
            )
            for i in range(30)
        ],
        # Late events: a second page view for old sessions s1 and s2 (engaged now, their
        # first day too), a conversion with revenue for s5, long engagement for s6.
        [
            ev(200, 3000, user_id="u1", session_id="s1", event_name="page_view"),
            ev(201, 3001, user_id="u1", session_id="s1", event_name="page_view"),
            ev(202, 3002, user_id="u2", session_id="s2", event_name="page_view"),
            ev(203, 3003, user_id="u2", session_id="s2", event_name="page_view"),
            ev(204, 3004, user_id="u5", session_id="s5", event_name="purchase", revenue="19.99"),
            ev(205, 3005, user_id="u6", session_id="s6", engagement_time_msec=12_000),
            ev(206, 3006, event_name="first_visit"),  # no user, no session
            # An old session's user and session again, in the same hour, page and day as
            # before: already counted there (exact counts must not grow).
            ev(207, 64, user_id="u0", session_id="s7", page_path="/p1"),
        ],
        # Duplicates of earlier events change nothing.
        [
            ev(i, 9 * i, user_id=f"u{i % 7}", session_id=f"s{i}", page_path=f"/p{i % 3}")
            for i in range(10)
        ],
    ]
    for events in loads:
        async with db.session() as session:
            await load_events(session, "kol", events, source_id=None)
            await session.commit()
    async with db.session() as session:
        incremental = (await session.execute(_ALL_ROLLUPS, {"t": "kol"})).all()
        engaged_sessions = (
            (
                await session.execute(
                    text(
                        "SELECT session_id FROM stats_sessions WHERE tenant_id = 'kol' AND engaged"
                        " ORDER BY session_id"
                    )
                )
            )
            .scalars()
            .all()
        )
        await rebuild_rollups(session, "kol")
        await session.commit()
        rebuilt = (await session.execute(_ALL_ROLLUPS, {"t": "kol"})).all()
    assert engaged_sessions == ["s1", "s2", "s5", "s6"]
    assert [r[:12] for r in incremental] == [r[:12] for r in rebuilt]
    for mine, theirs in zip(incremental, rebuilt, strict=True):
        for a, b in zip(mine[12:], theirs[12:], strict=True):
            assert abs(_estimate(a) - _estimate(b)) <= RELATIVE_ERROR * max(1.0, _estimate(b))
    # The late events reached the old day's engaged sketch (s1 and s2 first seen there).
    first_day_total = min(
        (r for r in incremental if r.grain == 1 and r.dim == 0), key=lambda r: r.bucket
    )
    assert first_day_total.bucket == datetime(2026, 1, 4, 18, 30, tzinfo=UTC)
    assert _estimate(first_day_total.engaged_hll) >= 2
