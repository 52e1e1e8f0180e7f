"""An uncached widget sends exactly one statement to PostgreSQL.

The widget's inputs that the request path holds in memory (the tenant's calendar, its
data version and rollup state) are read first; then the query engine's statements are
counted with SQLAlchemy's ``before_cursor_execute`` on the engine the widget runs on.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)

from app.modules.dashboard.schemas import StatsQuery
from app.modules.dashboard.service import resolve_query, run_normal_query, tenant_calendar
from app.modules.events import get_data_version
from app.modules.events.state import rollup_state
from tests.fixtures.events import ALL_METRICS, EventLoader, TenantMaker, random_events

TODAY = datetime(2026, 4, 10, 12, tzinfo=UTC)
RANGE = ["2026-03-16", "2026-04-08"]
COMPARE = ["2026-02-20", "2026-03-15"]
# Filters on two different dimensions that every event passes force the raw-events path.
FORCE_RAW = [["is_not", "country", ["XX"]], ["is_not", "city", ["XX"]]]
# The widgets of a dashboard page, shaped as the widget routes shape them.
WIDGETS: dict[str, dict[str, Any]] = {
    "summary": {"metrics": ALL_METRICS},
    "timeseries_day": {"metrics": ["users", "pageviews"], "dimensions": ["time:day"]},
    "timeseries_hour": {"metrics": ["users", "sessions"], "dimensions": ["time:hour"]},
    "breakdown_by_users": {"metrics": ["users", "pageviews"], "dimensions": ["page_path"]},
    "breakdown_by_pageviews": {
        "metrics": ["pageviews", "bounce_rate"],
        "dimensions": ["country"],
        "limit": 2,
    },
    "breakdown_all_metrics": {"metrics": ALL_METRICS, "dimensions": ["campaign"]},
}


class StatementCounter:
    def __init__(self, engine: AsyncEngine) -> None:
        self.statements: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.statements.append(args[2])

    def stop(self, engine: AsyncEngine) -> None:
        event.remove(engine.sync_engine, "before_cursor_execute", self._seen)


@pytest.fixture
async def acme(make_tenant: TenantMaker, load: EventLoader) -> str:
    await make_tenant("acme", timezone="Europe/Berlin", conversions=["purchase"])
    events = random_events(
        random.Random(14), start=datetime(2026, 2, 18, tzinfo=UTC), days=50, sessions=120, users=40
    )
    await load("acme", events)
    return "acme"


async def _answer_counting(
    engine: AsyncEngine, tenant_id: str, query: StatsQuery
) -> tuple[Any, list[str]]:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session:
        # What the request path holds in memory.
        calendar = await tenant_calendar(session, tenant_id)
        normal, zone = await resolve_query(session, tenant_id, query, calendar, now=TODAY)
        version = await get_data_version(session, tenant_id)
        built = await rollup_state(session, tenant_id)
    counter = StatementCounter(engine)
    session: AsyncSession
    async with sessions() as session:
        result = await run_normal_query(
            session, tenant_id, normal, zone, calendar, version, rollups=built
        )
    counter.stop(engine)
    return result, counter.statements


@pytest.mark.parametrize("compare", [None, COMPARE], ids=["alone", "compared"])
@pytest.mark.parametrize("filters", [[], FORCE_RAW], ids=["rollups", "raw_events"])
@pytest.mark.parametrize("widget", list(WIDGETS))
async def test_uncached_widget_sends_one_statement(
    engine: AsyncEngine, acme: str, widget: str, filters: list[Any], compare: list[str] | None
) -> None:
    query = StatsQuery(date_range=RANGE, compare=compare, filters=filters, **WIDGETS[widget])
    result, statements = await _answer_counting(engine, acme, query)
    assert len(statements) == 1, statements
    assert result.meta.source == ("events" if filters else "rollups")
    first = query.metrics[0]
    assert result.totals[first] > 0
    assert result.rows or widget == "summary"
    if compare is not None:
        assert result.comparison is not None
        assert result.comparison.totals[first] > 0


async def test_run_normal_query_reads_the_rollup_state_itself_when_not_given(
    engine: AsyncEngine, acme: str
) -> None:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    query = StatsQuery(date_range=RANGE, **WIDGETS["summary"])
    async with sessions() as session:
        calendar = await tenant_calendar(session, acme)
        normal, zone = await resolve_query(session, acme, query, calendar, now=TODAY)
        counter = StatementCounter(engine)
        result = await run_normal_query(session, acme, normal, zone, calendar)
    # The data version, the rollup state, then the one aggregate statement.
    assert len(counter.statements) == 3
    assert result.meta.source == "rollups"


@pytest.mark.parametrize("filters", [[], FORCE_RAW], ids=["rollups", "raw_events"])
async def test_top_breakdown_comparison_equals_the_previous_period_asked_alone(
    engine: AsyncEngine, acme: str, filters: list[Any]
) -> None:
    # The comparison period rides in the same statement, limited to the ranked rows.
    metrics = ["pageviews", "users", "bounce_rate"]
    compared, statements = await _answer_counting(
        engine,
        acme,
        StatsQuery(
            metrics=metrics,
            dimensions=["page_path"],
            date_range=RANGE,
            compare=COMPARE,
            filters=filters,
            limit=3,
        ),
    )
    alone, _ = await _answer_counting(
        engine,
        acme,
        StatsQuery(
            metrics=metrics,
            dimensions=["page_path"],
            date_range=COMPARE,
            filters=filters,
            limit=1000,
        ),
    )
    assert len(statements) == 1
    assert len(compared.rows) == 3
    before = {row.dimensions["page_path"]: row.metrics for row in alone.rows}
    for row in compared.rows:
        assert row.comparison == before[row.dimensions["page_path"]]
    assert compared.comparison is not None
    assert compared.comparison.totals == alone.totals


def test_part_parameters_get_the_part_prefix_and_casts_stay_intact() -> None:
    from app.modules.events.widget_sql import prefixed

    sql, params = prefixed(
        "SELECT (r.bucket AT TIME ZONE :tz)::date, make_interval(mins => :offset_minutes)"
        " WHERE r.tenant_id = :tenant_id AND x = ANY(CAST(:f0 AS text[]))",
        {"tz": "UTC", "offset_minutes": 0, "tenant_id": "acme", "f0": ["a"]},
        "p1_",
    )
    assert sql == (
        "SELECT (r.bucket AT TIME ZONE :p1_tz)::date, make_interval(mins => :p1_offset_minutes)"
        " WHERE r.tenant_id = :p1_tenant_id AND x = ANY(CAST(:p1_f0 AS text[]))"
    )
    assert params == {
        "p1_tz": "UTC",
        "p1_offset_minutes": 0,
        "p1_tenant_id": "acme",
        "p1_f0": ["a"],
    }
