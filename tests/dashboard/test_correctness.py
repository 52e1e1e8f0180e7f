"""Random queries through the API equal a brute-force SQL query over raw events:
exactly for exact metrics, within the bound ``meta.approximate`` states otherwise."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from app.core.db import Database
from app.core.settings import Settings
from app.modules.events import compact_tenant_rollups
from tests.dashboard.reference import EMPTY, brute_force, derive
from tests.fixtures.events import (
    ALL_METRICS,
    CAMPAIGNS,
    COUNTRIES,
    PAGES,
    EventLoader,
    Sessions,
    TenantMaker,
    random_events,
)

# Spans both daylight-saving starts (New York 8 March, Berlin 29 March 2026).
DATA_START = datetime(2026, 3, 1, tzinfo=UTC)
DATA_DAYS = 40
PLAIN_DIMENSIONS = ["event_name", "page_path", "country", "city", "device_category", "campaign"]
TIME_DIMENSIONS = ["time:hour", "time:day", "time:week", "time:month"]
TIMEZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]
FILTER_VALUES: dict[str, list[str]] = {
    "country": [c or "(not set)" for c in COUNTRIES],
    "page_path": [p or "(not set)" for p in PAGES] + ["blog", "PRIC"],
    "campaign": [c or "(not set)" for c in CAMPAIGNS] + ["friday"],
    "event_name": ["page_view", "purchase", "first_visit", "click"],
}


@pytest.fixture
async def dataset(
    make_tenant: TenantMaker, load: EventLoader, auth_headers: Any, settings: Settings
) -> dict[str, Any]:
    await make_tenant("acme", timezone="Europe/Berlin", conversions=["purchase", "click"])
    await make_tenant("other")
    rng = random.Random(20261127)
    events = random_events(rng, start=DATA_START, days=DATA_DAYS, sessions=260, users=90)
    # Two loads whose days overlap: the second refresh must merge with the first's data
    # (late events can change older days' engaged sessions).
    rng.shuffle(events)
    half = len(events) // 2
    await load("acme", events[:half])
    await load("acme", events[half:])
    noise = random_events(random.Random(7), start=DATA_START, days=DATA_DAYS, sessions=40, users=10)
    await load("other", noise)
    # As an import run leaves them: week and month rows for the weeks and months that
    # ended (a Berlin range of a week or more reads some of them).
    db = Database.from_settings(settings, settings.database_url or "")
    try:
        assert await compact_tenant_rollups(db, "acme") > 0
    finally:
        await db.dispose()
    return {"headers": auth_headers("acme", "viewer")}


def _close(api: Any, exact: Any, metric: str, bounds: dict[str, Any]) -> bool:
    if exact is None or api is None:
        return api is None and exact is None
    bound = bounds.get(metric)
    if bound is None:
        return math.isclose(api, exact, rel_tol=1e-9, abs_tol=1e-6)
    if bound.get("absolute_error") is not None:
        return abs(api - exact) <= bound["absolute_error"] + 1e-9
    return abs(api - exact) <= bound["relative_error"] * abs(exact) + 1e-9


queries = st.fixed_dictionaries(
    {
        "metrics": st.lists(st.sampled_from(ALL_METRICS), min_size=1, max_size=4, unique=True),
        "plain": st.lists(st.sampled_from(PLAIN_DIMENSIONS), max_size=2, unique=True),
        "time": st.sampled_from([None, *TIME_DIMENSIONS]),
        "first": st.integers(min_value=-2, max_value=DATA_DAYS),
        "days": st.integers(min_value=1, max_value=21),
        "timezone": st.sampled_from(TIMEZONES),
        "filters": st.lists(
            st.tuples(
                st.sampled_from(["is", "is_not", "contains", "not_contains"]),
                st.sampled_from(sorted(FILTER_VALUES)),
                st.integers(min_value=0, max_value=100),
            ),
            max_size=2,
        ),
    }
)


@settings(
    max_examples=70,
    deadline=None,
    derandomize=True,
    # No explain phase: its line tracing slows every request tenfold.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=queries)
async def test_random_queries_match_brute_force(
    client: httpx.AsyncClient, dataset: dict[str, Any], db_sessions: Sessions, spec: dict[str, Any]
) -> None:
    dims = list(spec["plain"])
    if spec["time"] is not None:
        dims = [spec["time"], *dims][:2]
    first = DATA_START.date() + timedelta(days=spec["first"])
    last = first + timedelta(days=spec["days"] - 1)
    filters = []
    for operator, dimension, pick in spec["filters"]:
        values = FILTER_VALUES[dimension]
        chosen = sorted({values[pick % len(values)], values[(pick // 7) % len(values)]})
        filters.append([operator, dimension, chosen])
    body = {
        "metrics": spec["metrics"],
        "dimensions": dims,
        "date_range": [first.isoformat(), last.isoformat()],
        "filters": filters,
        "timezone": spec["timezone"],
        "limit": 10_000,
    }
    response = await client.post(
        "/api/v1/tenants/acme/stats/query", json=body, headers=dataset["headers"]
    )
    assert response.status_code == 200, response.text
    result = response.json()
    bounds = result["meta"]["approximate"]
    async with db_sessions() as session:
        expected = await brute_force(
            session,
            "acme",
            first=first,
            last=last,
            timezone=spec["timezone"],
            dimensions=dims,
            filters=filters,
            conversions=["click", "purchase"],
        )
        expected_totals = (
            await brute_force(
                session,
                "acme",
                first=first,
                last=last,
                timezone=spec["timezone"],
                dimensions=[],
                filters=filters,
                conversions=["click", "purchase"],
            )
        ).get((), EMPTY)
    for metric in spec["metrics"]:
        want = derive(expected_totals, metric)
        got = result["totals"][metric]
        assert _close(got, want, metric, bounds), (metric, got, want, body)
    if not dims:
        assert result["rows"] == []
        return
    got_rows = {tuple(row["dimensions"][d] for d in dims): row for row in result["rows"]}
    zero_filled = len(dims) == 1 and dims[0].startswith("time:")
    if zero_filled:
        assert set(expected) <= set(got_rows), body
        assert [(label,) for label in result["meta"]["time_labels"]] == list(got_rows), body
    else:
        assert set(got_rows) == set(expected), body
    for key, row in got_rows.items():
        agg = expected.get(key, EMPTY)
        for metric in spec["metrics"]:
            want = derive(agg, metric)
            assert _close(row["metrics"][metric], want, metric, bounds), (key, metric, body)
