"""Week and month rollup rows (issue #14): a long range reads them instead of day rows,
and every answer is the same as from the day rows alone.

Compaction runs as the app's own role (row-level security applies); the answers are
computed like a request computes them, uncached.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.core.db import Database
from app.core.settings import Settings
from app.modules.dashboard.schemas import StatsQuery
from app.modules.dashboard.service import resolve_query, run_normal_query, tenant_calendar
from app.modules.events import compact_tenant_rollups, get_data_version
from app.modules.events.definitions import GRAIN_DAY, GRAIN_MONTH, GRAIN_WEEK, TOTAL_DIMENSION
from app.modules.events.spec import AggregateSpec, TopN, coarse_grains
from app.modules.events.state import rollup_state
from app.modules.events.widget_sql import rollup_source
from app.modules.tenants import TenantUpdate, update_tenant
from tests.fixtures.events import (
    ALL_METRICS,
    EventLoader,
    Sessions,
    TenantMaker,
    make_event,
    random_events,
)

TODAY = datetime(2026, 4, 10, 12, tzinfo=UTC)
DATA_START = datetime(2025, 12, 20, tzinfo=UTC)
DATA_DAYS = 110  # to 9 April 2026
# Saturday 3 January to Wednesday 8 April: whole February and March, whole weeks in
# January, edge days; the previous period holds the whole of December.
RANGE = ["2026-01-03", "2026-04-08"]
WIDGETS: dict[str, dict[str, Any]] = {
    "summary": {"metrics": ALL_METRICS},
    "timeseries_day": {"metrics": ["users", "pageviews"], "dimensions": ["time:day"]},
    "timeseries_week": {"metrics": ALL_METRICS, "dimensions": ["time:week"]},
    "timeseries_month": {"metrics": ALL_METRICS, "dimensions": ["time:month"]},
    "breakdown_by_users": {"metrics": ["users", "pageviews"], "dimensions": ["page_path"]},
    "breakdown_top_2": {
        "metrics": ["pageviews", "bounce_rate"],
        "dimensions": ["country"],
        "limit": 2,
    },
    "breakdown_all_metrics": {"metrics": ALL_METRICS, "dimensions": ["campaign"]},
    "summary_filtered": {"metrics": ALL_METRICS, "filters": [["is", "country", ["DE", "FR"]]]},
    "breakdown_filtered": {
        "metrics": ["users", "sessions", "conversions"],
        "dimensions": ["page_path"],
        "filters": [["contains", "page_path", ["blog"]]],
    },
    "weekly_by_device": {"metrics": ["users"], "dimensions": ["time:week", "device_category"]},
}


@pytest.fixture
async def app_db(settings: Settings) -> AsyncIterator[Database]:
    """The app's own database access (its role is bound by row-level security)."""
    db = Database.from_settings(settings, settings.database_url or "")
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
async def acme(make_tenant: TenantMaker, load: EventLoader) -> str:
    await make_tenant("acme", timezone="Europe/Berlin", conversions=["purchase", "click"])
    await make_tenant("other")
    events = random_events(
        random.Random(1414), start=DATA_START, days=DATA_DAYS, sessions=360, users=110
    )
    random.Random(3).shuffle(events)
    half = len(events) // 2
    await load("acme", events[:half])
    await load("acme", events[half:])
    noise = random_events(random.Random(8), start=DATA_START, days=DATA_DAYS, sessions=50, users=9)
    await load("other", noise)
    return "acme"


async def _answer(
    engine: AsyncEngine, tenant_id: str, query: StatsQuery
) -> tuple[dict[str, Any], int]:
    """The uncached answer as plain data, and the statements it took."""
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session:
        calendar = await tenant_calendar(session, tenant_id)
        normal, zone = await resolve_query(session, tenant_id, query, calendar, now=TODAY)
        version = await get_data_version(session, tenant_id)
        built = await rollup_state(session, tenant_id)
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with sessions() as session:
            result = await run_normal_query(
                session, tenant_id, normal, zone, calendar, version, rollups=built
            )
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)
    return msgspec.to_builtins(result), len(statements)


async def _answers(engine: AsyncEngine, tenant_id: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, widget in WIDGETS.items():
        for compare in (None, "previous_period"):
            query = StatsQuery(date_range=RANGE, compare=compare, **widget)
            answer, statements = await _answer(engine, tenant_id, query)
            assert statements == 1, (name, compare)
            out[f"{name}/{compare}"] = answer
    return out


async def _coarse_rows(db_sessions: Sessions, tenant_id: str) -> dict[tuple[int, date], int]:
    """Week and month rows per (grain, local start day), all dimensions."""
    async with db_sessions() as session:
        rows = await session.execute(
            text(
                "SELECT r.grain, (r.bucket AT TIME ZONE t.timezone)::date AS day, count(*) AS n"
                " FROM stats_rollups r JOIN tenants t ON t.id = r.tenant_id"
                " WHERE r.tenant_id = :t AND r.grain IN (2, 3) GROUP BY 1, 2"
            ),
            {"t": tenant_id},
        )
        return {(row.grain, row.day): row.n for row in rows}


async def _drop_coarse(db_sessions: Sessions, tenant_id: str) -> None:
    async with db_sessions() as session:
        await session.execute(
            text("DELETE FROM stats_rollups WHERE tenant_id = :t AND grain IN (2, 3)"),
            {"t": tenant_id},
        )
        await session.commit()


def _mondays(first: date, last: date) -> set[date]:
    day = first + timedelta(days=-first.weekday() % 7)
    out = set()
    while day + timedelta(days=6) <= last:
        out.add(day)
        day += timedelta(days=7)
    return out


async def test_compaction_builds_every_complete_local_week_and_month_once(
    acme: str, app_db: Database, db_sessions: Sessions
) -> None:
    built = await compact_tenant_rollups(app_db, acme, now=TODAY)
    rows = await _coarse_rows(db_sessions, acme)
    months = {day for grain, day in rows if grain == GRAIN_MONTH}
    weeks = {day for grain, day in rows if grain == GRAIN_WEEK}
    # December to March ended before 10 April; April has not.
    assert months == {date(2025, 12, 1), date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)}
    # Every ISO week from the one holding 20 December to the one ending 5 April.
    assert weeks == _mondays(date(2025, 12, 15), date(2026, 4, 5))
    assert built == len(months) + len(weeks)
    # Nothing is missing any more; the other tenant got nothing.
    assert await compact_tenant_rollups(app_db, acme, now=TODAY) == 0
    assert await _coarse_rows(db_sessions, "other") == {}


async def test_long_range_answers_are_identical_with_and_without_week_and_month_rows(
    acme: str, app_db: Database, engine: AsyncEngine
) -> None:
    day_only = await _answers(engine, acme)
    assert await compact_tenant_rollups(app_db, acme, now=TODAY) > 0
    with_coarse = await _answers(engine, acme)
    for key, answer in day_only.items():
        assert with_coarse[key] == answer, key
    assert day_only["summary/None"]["totals"]["events"] > 0


def _spec(start: date, end: date, zone: str = "Europe/Berlin", **kw: Any) -> AggregateSpec:
    tz = ZoneInfo(zone)
    return AggregateSpec(
        tenant_id="acme",
        start=datetime.combine(start, datetime.min.time(), tz).astimezone(UTC),
        end=datetime.combine(end, datetime.min.time(), tz).astimezone(UTC),
        timezone=zone,
        rollup_timezone=zone,
        **kw,
    )


async def _pieces_read(db_sessions: Sessions, spec: AggregateSpec) -> dict[int, set[date]]:
    """Which rows (grain -> local start days) the statement reads for ``spec``'s totals."""
    ctes, source, where = rollup_source(spec, (GRAIN_DAY, None), "0")
    sql = ("WITH " + ",\n".join(ctes) if ctes else "") + (
        f" SELECT DISTINCT r.grain, (r.bucket AT TIME ZONE :tz)::date AS day"
        f" FROM {source} r WHERE {where}"
    )
    params = {
        "tenant_id": spec.tenant_id,
        "start": spec.start,
        "end": spec.end,
        "tz": spec.timezone,
        "grain": GRAIN_DAY,
        "dim": TOTAL_DIMENSION,
    }
    async with db_sessions() as session:
        rows = (await session.execute(text(sql), params)).all()
    out: dict[int, set[date]] = {}
    for row in rows:
        out.setdefault(row.grain, set()).add(row.day)
    return out


def _days(first: date, last: date) -> set[date]:
    return {first + timedelta(days=i) for i in range((last - first).days + 1)}


async def test_plan_reads_months_then_whole_weeks_then_days_where_built(
    acme: str, app_db: Database, db_sessions: Sessions
) -> None:
    spec = _spec(date(2026, 1, 3), date(2026, 4, 9))
    before = await _pieces_read(db_sessions, spec)
    assert set(before) == {GRAIN_DAY}
    days_with_events = before[GRAIN_DAY]  # a quiet day has no row
    assert days_with_events <= _days(date(2026, 1, 3), date(2026, 4, 8))
    assert len(days_with_events) > 60
    await compact_tenant_rollups(app_db, acme, now=TODAY)
    assert await _pieces_read(db_sessions, spec) == {
        GRAIN_MONTH: {date(2026, 2, 1), date(2026, 3, 1)},
        # Whole weeks in January; the week of 26 January runs into February.
        GRAIN_WEEK: {date(2026, 1, 5), date(2026, 1, 12), date(2026, 1, 19)},
        GRAIN_DAY: days_with_events
        & (
            _days(date(2026, 1, 3), date(2026, 1, 4))
            | _days(date(2026, 1, 26), date(2026, 1, 31))
            | _days(date(2026, 4, 1), date(2026, 4, 8))
        ),
    }
    # A week not built (yet, or invalidated) is read from its days.
    async with db_sessions() as session:
        await session.execute(
            text(
                "DELETE FROM stats_rollups WHERE tenant_id = 'acme' AND grain = 2"
                " AND bucket = '2026-01-12 00:00+01'"
            )
        )
        await session.commit()
    read = await _pieces_read(db_sessions, spec)
    assert read[GRAIN_WEEK] == {date(2026, 1, 5), date(2026, 1, 19)}
    assert read[GRAIN_DAY] & _days(date(2026, 1, 12), date(2026, 1, 18)) == days_with_events & (
        _days(date(2026, 1, 12), date(2026, 1, 18))
    )


def test_coarse_grains_follow_the_time_grouping_and_the_range_length() -> None:
    day_plan, hour_plan = (GRAIN_DAY, None), (0, None)
    long = dict(start=date(2026, 1, 1), end=date(2026, 4, 1))
    assert coarse_grains(_spec(**long), day_plan) == (GRAIN_MONTH, GRAIN_WEEK)
    assert coarse_grains(_spec(**long, group_by=("page_path",)), day_plan) == (
        GRAIN_MONTH,
        GRAIN_WEEK,
    )
    assert coarse_grains(_spec(**long, group_by=("time:week",)), day_plan) == (GRAIN_WEEK,)
    assert coarse_grains(_spec(**long, group_by=("time:month",)), day_plan) == (GRAIN_MONTH,)
    assert coarse_grains(_spec(**long, group_by=("time:day",)), day_plan) == ()
    assert coarse_grains(_spec(**long), hour_plan) == ()
    ranked = _spec(**long, group_by=("country",), top=TopN("users", True, 5))
    assert coarse_grains(ranked, (GRAIN_DAY, "country")) == (GRAIN_MONTH, GRAIN_WEEK)
    # Too short for a month, long enough for a week; too short for either.
    assert coarse_grains(_spec(date(2026, 3, 2), date(2026, 3, 20)), day_plan) == (GRAIN_WEEK,)
    assert coarse_grains(_spec(date(2026, 3, 2), date(2026, 3, 8)), day_plan) == ()


async def test_import_into_an_old_day_invalidates_its_week_and_month_and_is_counted(
    acme: str, app_db: Database, engine: AsyncEngine, db_sessions: Sessions, load: EventLoader
) -> None:
    await compact_tenant_rollups(app_db, acme, now=TODAY)
    before = await _coarse_rows(db_sessions, acme)
    summary = StatsQuery(date_range=RANGE, metrics=ALL_METRICS)
    old, _ = await _answer(engine, acme, summary)
    # A late event on Wednesday 14 January, and a late event that makes an existing
    # session of 10 February engaged (its earlier day's engaged sketches change).
    await load(
        "acme",
        [
            make_event(
                datetime(2026, 1, 14, 10, tzinfo=UTC), "page_view", user_id="late", session_id="l1"
            ),
            make_event(
                datetime(2026, 2, 10, 9, tzinfo=UTC),
                "purchase",
                user_id="late",
                session_id="l2",
                revenue=10,
            ),
        ],
    )
    after = await _coarse_rows(db_sessions, acme)
    gone = set(before) - set(after)
    assert gone == {
        (GRAIN_WEEK, date(2026, 1, 12)),
        (GRAIN_MONTH, date(2026, 1, 1)),
        (GRAIN_WEEK, date(2026, 2, 9)),
        (GRAIN_MONTH, date(2026, 2, 1)),
    }
    assert set(after) == set(before) - gone
    new, _ = await _answer(engine, acme, summary)
    assert new["totals"]["events"] == old["totals"]["events"] + 2
    assert new["totals"]["conversions"] == old["totals"]["conversions"] + 1
    # Rebuilt, the weeks and months give the same answers as the day rows alone.
    assert await compact_tenant_rollups(app_db, acme, now=TODAY) == len(gone)
    with_coarse = await _answers(engine, acme)
    await _drop_coarse(db_sessions, acme)
    assert await _answers(engine, acme) == with_coarse


async def test_event_that_turns_an_old_session_engaged_invalidates_the_sessions_weeks(
    acme: str, app_db: Database, engine: AsyncEngine, db_sessions: Sessions, load: EventLoader
) -> None:
    # A one-event session on 5 January, not engaged; a late event in it on 8 March makes
    # it engaged: the engaged sketches of 5 January change, so its week and month go.
    await load(
        "acme",
        [make_event(datetime(2026, 1, 6, 12, tzinfo=UTC), "scroll", user_id="x", session_id="x1")],
    )
    await compact_tenant_rollups(app_db, acme, now=TODAY)
    query = StatsQuery(date_range=RANGE, metrics=["engaged_sessions", "sessions"])
    old, _ = await _answer(engine, acme, query)
    await load(
        "acme",
        [
            make_event(
                datetime(2026, 3, 8, 12, tzinfo=UTC),
                "purchase",
                user_id="x",
                session_id="x1",
                revenue=5,
            )
        ],
    )
    after = await _coarse_rows(db_sessions, acme)
    assert (GRAIN_WEEK, date(2026, 1, 5)) not in after
    assert (GRAIN_MONTH, date(2026, 1, 1)) not in after
    assert (GRAIN_MONTH, date(2026, 3, 1)) not in after
    new, _ = await _answer(engine, acme, query)
    await _drop_coarse(db_sessions, acme)
    day_only, _ = await _answer(engine, acme, query)
    assert new == day_only
    assert new != old


async def test_timezone_change_rebuild_drops_every_week_and_month_until_compacted_again(
    acme: str, app_db: Database, engine: AsyncEngine, db_sessions: Sessions, load: EventLoader
) -> None:
    await compact_tenant_rollups(app_db, acme, now=TODAY)
    async with db_sessions() as session:
        await update_tenant(session, acme, TenantUpdate(timezone="America/New_York"))
        await session.commit()
    # The next load rebuilds the day rows in the new zone.
    await load(
        "acme",
        [
            make_event(
                datetime(2026, 2, 2, 12, tzinfo=UTC), "page_view", user_id="n", session_id="n"
            )
        ],
    )
    assert await _coarse_rows(db_sessions, acme) == {}
    day_only = await _answers(engine, acme)
    assert await compact_tenant_rollups(app_db, acme, now=TODAY) > 0
    months = {day for grain, day in await _coarse_rows(db_sessions, acme) if grain == GRAIN_MONTH}
    assert date(2026, 3, 1) in months
    assert await _answers(engine, acme) == day_only


async def test_compaction_in_another_tenants_context_sees_and_writes_nothing(
    acme: str, settings: Settings, db_sessions: Sessions
) -> None:
    db = Database.from_settings(settings, settings.database_url or "")
    try:
        # The unit of work is bound to "other": acme's day rows are invisible to it.
        async with db.session("other") as session:
            from app.modules.events.grains import compact_rollups

            done = await compact_rollups(session, "acme", now=TODAY)
            await session.commit()
        assert done.built == 0
        assert await _coarse_rows(db_sessions, acme) == {}
        await compact_tenant_rollups(db, "acme", now=TODAY)
        async with db.session("other") as session:
            seen = await session.execute(
                text("SELECT DISTINCT tenant_id FROM stats_rollups WHERE grain IN (2, 3)")
            )
            assert seen.all() == []
    finally:
        await db.dispose()


async def test_compaction_skips_while_a_load_of_the_tenant_holds_its_lock(
    acme: str, app_db: Database, db_sessions: Sessions
) -> None:
    from app.modules.events.grains import compact_rollups

    async with db_sessions() as load_session:
        # What a load holds until it commits (app.modules.events.service).
        await load_session.execute(
            text("SELECT pg_advisory_xact_lock(7201004, hashtext(:t))"), {"t": acme}
        )
        async with app_db.session(acme) as session:
            done = await compact_rollups(session, acme, now=TODAY)
            await session.commit()
        assert done.locked_out
        assert done.built == 0
        assert await compact_tenant_rollups(app_db, acme, now=TODAY) == 0
        await load_session.rollback()
    assert await _coarse_rows(db_sessions, acme) == {}
    assert await compact_tenant_rollups(app_db, acme, now=TODAY) > 0
