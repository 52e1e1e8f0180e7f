"""The stats API end to end: routes, validation, presets, comparisons, CSV, cache,
rate limit, isolation, empty and late data."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar

from app.core.timezones import load_zone
from app.main import create_app
from app.modules.dashboard import StatsQuery, run_query
from tests.conftest import make_settings, serve_in_process
from tests.fixtures.events import ALL_METRICS, EventLoader, Sessions, TenantMaker, make_event
from tests.fixtures.notify import settle

QUERY = "/api/v1/tenants/acme/stats/query"
BASE = "/api/v1/tenants/acme/stats"


@pytest.fixture
def viewer(auth_headers: Any) -> dict[str, str]:
    headers: dict[str, str] = auth_headers("acme", "viewer")
    return headers


async def _seed_march(make_tenant: TenantMaker, load: EventLoader) -> None:
    await make_tenant("acme", timezone="UTC", conversions=["purchase", "signup"])
    await load(
        "acme",
        [
            # s1: two page views -> engaged; u1 is new.
            make_event("2026-03-10T09:00:00Z", "first_visit", user_id="u1", session_id="s1"),
            make_event("2026-03-10T09:00:01Z", user_id="u1", session_id="s1", page_path="/"),
            make_event("2026-03-10T09:01:00Z", user_id="u1", session_id="s1", page_path="/p"),
            # s2: one page view, 3 s -> bounce.
            make_event(
                "2026-03-10T15:00:00Z",
                user_id="u2",
                session_id="s2",
                page_path="/",
                country="DE",
                engagement_time_msec=3000,
            ),
            # s3: a purchase -> engaged and converting.
            make_event(
                "2026-03-11T08:00:00Z",
                "purchase",
                user_id="u2",
                session_id="s3",
                page_path="/checkout",
                country="DE",
                revenue="19.99",
            ),
            # Previous period (3-4 March for a 10-11 March range... and 8-9 March).
            make_event("2026-03-08T10:00:00Z", user_id="u3", session_id="s4", page_path="/"),
            # A year before, for year-over-year.
            make_event("2025-03-10T10:00:00Z", user_id="u9", session_id="s9", page_path="/"),
        ],
    )


async def test_query_returns_ga4_metrics_totals_and_breakdown(
    client: httpx.AsyncClient, make_tenant: TenantMaker, load: EventLoader, viewer: dict[str, str]
) -> None:
    await _seed_march(make_tenant, load)
    body = {
        "metrics": ALL_METRICS,
        "dimensions": ["page_path"],
        "date_range": ["2026-03-10", "2026-03-11"],
    }
    response = await client.post(QUERY, json=body, headers=viewer)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["totals"] == {
        "events": 5,
        "pageviews": 3,
        "users": 2,
        "new_users": 1,
        "sessions": 3,
        "engaged_sessions": 2,
        "bounce_rate": pytest.approx(1 / 3),
        "avg_session_duration": pytest.approx(1.0),
        "views_per_session": 1.0,
        "conversions": 1,
        "conversion_rate": pytest.approx(1 / 3),
        "revenue": pytest.approx(19.99),
    }
    rows = {row["dimensions"]["page_path"]: row["metrics"] for row in result["rows"]}
    assert set(rows) == {"/", "/p", "/checkout", "(not set)"}
    assert rows["/"]["users"] == 2
    assert rows["/"]["pageviews"] == 2
    assert rows["/checkout"]["revenue"] == pytest.approx(19.99)
    meta = result["meta"]
    assert meta["source"] == "rollups"
    assert meta["date_range"] == ["2026-03-10", "2026-03-11"]
    assert meta["fresh_until"].startswith("2026-03-11T08:00:00")
    assert meta["data_version"] >= 1
    assert meta["cached"] is False
    assert set(meta["approximate"]) >= {"users", "sessions", "engaged_sessions", "bounce_rate"}
    assert meta["approximate"]["users"]["relative_error"] < 0.05
    # Default order: first metric descending, then the dimension ascending.
    assert [r["metrics"]["events"] for r in result["rows"]] == sorted(
        (r["metrics"]["events"] for r in result["rows"]), reverse=True
    )


async def test_two_dimensions_and_filters_fall_back_to_exact_raw_events(
    client: httpx.AsyncClient, make_tenant: TenantMaker, load: EventLoader, viewer: dict[str, str]
) -> None:
    await _seed_march(make_tenant, load)
    body = {
        "metrics": ["events", "users", "sessions"],
        "dimensions": ["country", "page_path"],
        "filters": [["is", "country", ["DE"]], ["not_contains", "page_path", ["CHECK"]]],
        "date_range": ["2026-03-10", "2026-03-11"],
    }
    result = (await client.post(QUERY, json=body, headers=viewer)).json()
    assert result["meta"]["source"] == "events"
    assert result["meta"]["approximate"] == {}
    assert result["rows"] == [
        {
            "dimensions": {"country": "DE", "page_path": "/"},
            "metrics": {"events": 1, "users": 1, "sessions": 1},
            "comparison": None,
            "change": None,
        }
    ]
    contains = {**body, "filters": [["contains", "page_path", ["CHECK", "/P"]]]}
    rows = (await client.post(QUERY, json=contains, headers=viewer)).json()["rows"]
    assert {r["dimensions"]["page_path"] for r in rows} == {"/checkout", "/p"}
    is_not = {**body, "dimensions": ["country"], "filters": [["is_not", "country", ["DE"]]]}
    rows = (await client.post(QUERY, json=is_not, headers=viewer)).json()["rows"]
    assert [(r["dimensions"]["country"], r["metrics"]["events"]) for r in rows] == [
        ("(not set)", 3)
    ]


async def test_timeseries_zero_fills_labels_and_compares_previous_period(
    client: httpx.AsyncClient, make_tenant: TenantMaker, load: EventLoader, viewer: dict[str, str]
) -> None:
    await _seed_march(make_tenant, load)
    response = await client.get(
        f"{BASE}/timeseries",
        params={
            "metrics": "events,users",
            "interval": "day",
            "date_range": "2026-03-10,2026-03-12",
            "compare": "previous_period",
        },
        headers=viewer,
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["meta"]["time_labels"] == ["2026-03-10", "2026-03-11", "2026-03-12"]
    assert result["meta"]["compare_range"] == ["2026-03-07", "2026-03-09"]
    rows = result["rows"]
    assert [r["dimensions"]["time:day"] for r in rows] == result["meta"]["time_labels"]
    assert [r["metrics"]["events"] for r in rows] == [4, 1, 0]
    # Bucket i is compared with bucket i of the previous period (7, 8, 9 March).
    assert [r["comparison"]["events"] for r in rows] == [0, 1, 0]
    assert rows[1]["change"]["events"] == 0.0
    assert rows[0]["change"]["events"] is None  # nothing to compare with
    assert result["comparison"]["totals"]["events"] == 1
    assert result["comparison"]["change"]["events"] == pytest.approx(4.0)


async def test_year_over_year_and_custom_comparison(
    client: httpx.AsyncClient, make_tenant: TenantMaker, load: EventLoader, viewer: dict[str, str]
) -> None:
    await _seed_march(make_tenant, load)
    params = {"date_range": "2026-03-10,2026-03-10", "compare": "year_over_year"}
    result = (await client.get(f"{BASE}/summary", params=params, headers=viewer)).json()
    assert result["comparison"]["date_range"] == ["2025-03-10", "2025-03-10"]
    assert result["comparison"]["totals"]["users"] == 1
    assert result["totals"]["users"] == 2
    assert result["comparison"]["change"]["users"] == pytest.approx(1.0)
    assert set(result["totals"]) == set(result["query"]["metrics"])
    assert len(result["totals"]) == 12
    body = {
        "metrics": ["pageviews"],
        "date_range": ["2026-03-10", "2026-03-10"],
        "compare": ["2026-03-08", "2026-03-08"],
    }
    result = (await client.post(QUERY, json=body, headers=viewer)).json()
    assert result["comparison"]["totals"] == {"pageviews": 1}
    assert result["comparison"]["change"] == {"pageviews": pytest.approx(2.0)}


async def test_order_limit_offset_and_breakdown_route(
    client: httpx.AsyncClient, make_tenant: TenantMaker, load: EventLoader, viewer: dict[str, str]
) -> None:
    await _seed_march(make_tenant, load)
    params = {
        "dimension": "page_path",
        "metrics": "pageviews,users",
        "date_range": "2026-03-01,2026-03-31",
        "limit": "2",
    }
    result = (await client.get(f"{BASE}/breakdown", params=params, headers=viewer)).json()
    assert [r["dimensions"]["page_path"] for r in result["rows"]] == ["/", "/p"]
    assert result["meta"]["total_rows"] == 4
    page2 = (
        await client.get(f"{BASE}/breakdown", params={**params, "offset": "2"}, headers=viewer)
    ).json()
    assert [r["dimensions"]["page_path"] for r in page2["rows"]] == ["(not set)", "/checkout"]
    # Top lists ranked in SQL (by users: candidates from per-day counts) give the
    # head of the full, unranked list.
    full = {
        "metrics": ["users", "revenue"],
        "dimensions": ["page_path"],
        "date_range": ["2026-03-01", "2026-03-31"],
        "limit": 10_000,
    }
    everything = (await client.post(QUERY, json=full, headers=viewer)).json()["rows"]
    for metric in ("users", "revenue"):
        ordered = {**full, "order_by": [[metric, "desc"]]}
        head = (await client.post(QUERY, json={**ordered, "limit": 2}, headers=viewer)).json()
        whole = (await client.post(QUERY, json=ordered, headers=viewer)).json()
        assert head["rows"] == whole["rows"][:2]
        assert head["meta"]["total_rows"] == len(everything) == 4
    body = {
        "metrics": ["events"],
        "dimensions": ["page_path"],
        "date_range": ["2026-03-01", "2026-03-31"],
        "order_by": [["page_path", "desc"]],
    }
    rows = (await client.post(QUERY, json=body, headers=viewer)).json()["rows"]
    assert [r["dimensions"]["page_path"] for r in rows] == ["/p", "/checkout", "/", "(not set)"]


INVALID_QUERIES: list[tuple[dict[str, Any], str]] = [
    ({"metrics": ["visits"]}, "metrics[0]"),
    ({"metrics": []}, "metrics"),
    ({"metrics": ["users"], "dimensions": ["planet"]}, "dimensions[0]"),
    ({"metrics": ["users"], "dimensions": ["time:minute"]}, "dimensions[0]"),
    ({"metrics": ["users"], "dimensions": ["country", "city", "os"]}, "dimensions"),
    ({"metrics": ["users"], "filters": [["like", "country", ["DE"]]]}, "filters[0][0]"),
    ({"metrics": ["users"], "filters": [["is", "planet", ["DE"]]]}, "filters[0][1]"),
    ({"metrics": ["users"], "filters": [["is", "country", []]]}, "filters[0][2]"),
    ({"metrics": ["users"], "filters": [["is", "country"]]}, "filters[0]"),
    ({"metrics": ["users"], "date_range": ["2026-03-10", "2026-03-01"]}, "date_range"),
    ({"metrics": ["users"], "date_range": ["2000-01-01", "2026-03-01"]}, "date_range"),
    ({"metrics": ["users"], "date_range": ["2026-02-30", "2026-03-01"]}, "date_range[0]"),
    ({"metrics": ["users"], "date_range": "forever"}, "date_range"),
    ({"metrics": ["users"], "compare": "last_week"}, "compare"),
    ({"metrics": ["users"], "timezone": "Mars/Olympus"}, "timezone"),
    ({"metrics": ["users"], "timezone": "../../etc/passwd"}, "timezone"),
    ({"metrics": ["users"], "limit": 10_001}, "limit"),
    ({"metrics": ["users"], "offset": -1}, "offset"),
    ({"metrics": ["users"], "order_by": [["revenue", "desc"]]}, "order_by[0][0]"),
    ({"metrics": ["users"], "order_by": [["users", "up"]]}, "order_by[0][1]"),
    ({"metrics": ["users", 3]}, "metrics[1]"),
    ({"metrics": ["users"], "colour": "red"}, "colour"),
    (
        {
            "metrics": ["users"],
            "dimensions": ["time:hour"],
            "date_range": ["2025-01-01", "2026-06-01"],
        },
        "date_range",
    ),
]


async def test_invalid_queries_are_400_naming_the_field(
    client: httpx.AsyncClient, make_tenant: TenantMaker, viewer: dict[str, str]
) -> None:
    await make_tenant("acme")
    for body, field in INVALID_QUERIES:
        response = await client.post(QUERY, json=body, headers=viewer)
        assert response.status_code == 400, (body, response.text[:300])
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["field"] == field, body


async def test_invalid_widget_parameters_are_400(
    client: httpx.AsyncClient, make_tenant: TenantMaker, viewer: dict[str, str]
) -> None:
    await make_tenant("acme")
    cases = [
        (f"{BASE}/breakdown", {"dimension": "planet"}, "dimensions[0]"),
        (f"{BASE}/timeseries", {"interval": "minute"}, "dimensions[0]"),
        (f"{BASE}/summary", {"filters": "not json"}, "filters"),
        (f"{BASE}/breakdown", {"dimension": "country", "limit": "20000"}, "limit"),
        (f"{BASE}/summary", {"date_range": "2026-01-01,2025-01-01"}, "date_range"),
    ]
    for path, params, field in cases:
        response = await client.get(path, params=params, headers=viewer)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["field"] == field
    bad_json = await client.post(
        QUERY, content=b"{", headers={**viewer, "content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert bad_json.json()["field"] == "body"


async def test_presets_resolve_in_the_tenant_timezone(
    client: httpx.AsyncClient, make_tenant: TenantMaker, load: EventLoader, viewer: dict[str, str]
) -> None:
    await make_tenant("acme", timezone="America/New_York")
    zone = await load_zone("America/New_York")
    first_event = datetime.now(UTC) - timedelta(days=3)
    await load("acme", [make_event(first_event, user_id="u", session_id="s")])
    today = datetime.now(UTC).astimezone(zone).date()
    month_start = today.replace(day=1)
    last_month_end = month_start - timedelta(days=1)
    expected = {
        "today": (today, today),
        "yesterday": (today - timedelta(days=1), today - timedelta(days=1)),
        "7d": (today - timedelta(days=6), today),
        "28d": (today - timedelta(days=27), today),
        "30d": (today - timedelta(days=29), today),
        "90d": (today - timedelta(days=89), today),
        "month": (month_start, today),
        "last_month": (last_month_end.replace(day=1), last_month_end),
        "year": (date(today.year, 1, 1), today),
        "all": (first_event.astimezone(zone).date(), today),
    }
    for preset, (first, last) in expected.items():
        result = (
            await client.post(
                QUERY, json={"metrics": ["events"], "date_range": preset}, headers=viewer
            )
        ).json()
        assert result["meta"]["date_range"] == [first.isoformat(), last.isoformat()], preset
        assert result["meta"]["timezone"] == "America/New_York"
    twelve = (
        await client.post(QUERY, json={"metrics": ["events"], "date_range": "12mo"}, headers=viewer)
    ).json()["meta"]["date_range"]
    assert twelve[1] == today.isoformat()
    assert date.fromisoformat(twelve[0]).day == 1
    assert (today.year * 12 + today.month) - (
        date.fromisoformat(twelve[0]).year * 12 + date.fromisoformat(twelve[0]).month
    ) == 11
    summary = (await client.get(f"{BASE}/summary?date_range=7d", headers=viewer)).json()
    assert summary["totals"]["events"] == 1


async def test_csv_export_is_streamed_and_neutralises_formulas(
    client: httpx.AsyncClient, make_tenant: TenantMaker, load: EventLoader, viewer: dict[str, str]
) -> None:
    await make_tenant("acme")
    paths = ['=HYPERLINK("http://x")', "+1+2", "-3", "@SUM(A1)", "\tTab", "/safe"]
    await load(
        "acme",
        [make_event("2026-03-10T10:00:00Z", page_path=p, user_id=p, session_id="s") for p in paths]
        + [make_event("2026-03-03T10:00:00Z", page_path="/safe", user_id="a", session_id="b")]
        + [make_event("2026-03-03T10:00:00Z", page_path="/safe", user_id="c", session_id="d")],
    )
    body = {
        "metrics": ["pageviews"],
        "dimensions": ["page_path"],
        "date_range": ["2026-03-10", "2026-03-10"],
        "compare": ["2026-03-03", "2026-03-03"],
        "order_by": [["page_path", "asc"]],
    }
    async with client.stream(
        "POST", QUERY, json=body, headers={**viewer, "Accept": "text/csv"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        assert "content-length" not in response.headers  # streamed
        text = (await response.aread()).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["page_path", "pageviews", "pageviews_comparison", "pageviews_change"]
    cells = {r[0]: r[1:] for r in rows[1:]}
    assert set(cells) == {
        '\'=HYPERLINK("http://x")',
        "'+1+2",
        "'-3",
        "'@SUM(A1)",
        "'\tTab",
        "/safe",
    }
    # Numbers stay numbers, including a negative change.
    assert cells["/safe"] == ["1", "2", "-0.5"]
    via_param = await client.get(
        f"{BASE}/breakdown",
        params={"dimension": "page_path", "date_range": "2026-03-10,2026-03-10", "format": "csv"},
        headers=viewer,
    )
    assert via_param.status_code == 200
    assert via_param.headers["content-type"].startswith("text/csv")
    assert via_param.text.splitlines()[0] == "page_path,users,pageviews"
    assert "'=HYPERLINK" in via_param.text


async def test_cache_hits_until_an_import_commits(
    app: Litestar,
    client: httpx.AsyncClient,
    make_tenant: TenantMaker,
    load: EventLoader,
    db_sessions: Sessions,
    viewer: dict[str, str],
) -> None:
    await _seed_march(make_tenant, load)
    # The listener's first connection drops whatever is cached: let it connect first.
    await settle(app, db_sessions)
    body = {"metrics": ["events", "users"], "date_range": ["2026-03-10", "2026-03-11"]}
    first = await client.post(QUERY, json=body, headers=viewer)
    assert first.headers["x-cache"] == "miss"
    assert first.json()["meta"]["cached"] is False
    # Same query spelt differently (duplicate metric, default fields explicit): same key.
    same = {**body, "metrics": ["events", "users", "events"], "offset": 0}
    second = await client.post(QUERY, json=same, headers=viewer)
    assert second.headers["x-cache"] == "hit"
    assert second.json()["meta"]["cached"] is True
    assert second.json()["totals"] == first.json()["totals"]
    await load("acme", [make_event("2026-03-11T12:00:00Z", user_id="u7", session_id="s7")])
    await settle(app, db_sessions)  # the import's notification reached the app
    third = await client.post(QUERY, json=body, headers=viewer)
    assert third.headers["x-cache"] == "miss"
    assert third.json()["totals"]["events"] == first.json()["totals"]["events"] + 1
    assert third.json()["meta"]["data_version"] > first.json()["meta"]["data_version"]


async def test_rate_limit_per_tenant_with_headers_and_retry_after(
    database_url: str,
    clean_tables: None,
    make_tenant: TenantMaker,
    auth_headers: Any,
) -> None:
    await make_tenant("acme")
    await make_tenant("globex")
    app = create_app(
        make_settings(database_url, stats_rate_limit_per_minute=3, stats_rate_limit_burst=3)
    )
    async with serve_in_process(app) as http:
        acme = auth_headers("acme", "viewer")
        remaining = []
        for _ in range(3):
            response = await http.get(f"{BASE}/summary", headers=acme)
            assert response.status_code == 200
            assert response.headers["ratelimit-limit"] == "3"
            remaining.append(response.headers["ratelimit-remaining"])
        assert remaining == ["2", "1", "0"]
        limited = await http.get(f"{BASE}/summary", headers=acme)
        assert limited.status_code == 429
        assert limited.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.headers["ratelimit-remaining"] == "0"
        other = await http.get(
            "/api/v1/tenants/globex/stats/summary", headers=auth_headers("globex", "viewer")
        )
        assert other.status_code == 200


async def test_tenants_are_isolated(
    client: httpx.AsyncClient,
    make_tenant: TenantMaker,
    load: EventLoader,
    auth_headers: Any,
) -> None:
    await make_tenant("acme")
    await make_tenant("globex")
    await load("acme", [make_event("2026-03-10T10:00:00Z", user_id="a", session_id="1")])
    await load(
        "globex",
        [make_event("2026-03-10T10:00:00Z", user_id=f"g{i}", session_id="1") for i in range(5)],
    )
    body = {"metrics": ["events", "users"], "date_range": ["2026-03-10", "2026-03-10"]}
    for tenant, events in (("acme", 1), ("globex", 5)):
        for dims in ([], ["page_path"], ["country", "city"]):
            result = (
                await client.post(
                    f"/api/v1/tenants/{tenant}/stats/query",
                    json={**body, "dimensions": dims},
                    headers=auth_headers(tenant, "viewer"),
                )
            ).json()
            assert result["totals"] == {"events": events, "users": events}
    # A member of acme cannot read globex: 404, as if it did not exist.
    denied = await client.post(
        "/api/v1/tenants/globex/stats/query", json=body, headers=auth_headers("acme", "viewer")
    )
    assert denied.status_code == 404
    anonymous = await client.post("/api/v1/tenants/acme/stats/query", json=body)
    assert anonymous.status_code == 401


async def test_empty_tenant_gets_zeros_and_labels(
    client: httpx.AsyncClient, make_tenant: TenantMaker, viewer: dict[str, str]
) -> None:
    await make_tenant("acme", timezone="Europe/Berlin")
    result = (
        await client.post(
            QUERY,
            json={
                "metrics": ["users", "bounce_rate", "revenue"],
                "dimensions": ["time:day"],
                "date_range": "7d",
                "compare": "previous_period",
            },
            headers=viewer,
        )
    ).json()
    assert result["totals"] == {"users": 0, "bounce_rate": None, "revenue": 0.0}
    assert len(result["meta"]["time_labels"]) == 7
    assert [r["metrics"]["users"] for r in result["rows"]] == [0] * 7
    assert result["meta"]["fresh_until"] is None
    assert result["meta"]["data_version"] == 0
    breakdown = (
        await client.get(f"{BASE}/breakdown?dimension=country&date_range=all", headers=viewer)
    ).json()
    assert breakdown["rows"] == []
    assert breakdown["totals"] == {"users": 0, "pageviews": 0}


async def test_late_event_changes_an_older_days_rollup(
    app: Litestar,
    client: httpx.AsyncClient,
    make_tenant: TenantMaker,
    load: EventLoader,
    db_sessions: Sessions,
    viewer: dict[str, str],
) -> None:
    await make_tenant("acme")
    await load("acme", [make_event("2026-03-10T23:59:50Z", user_id="u", session_id="s")])
    body = {
        "metrics": ["sessions", "engaged_sessions", "bounce_rate"],
        "date_range": ["2026-03-10", "2026-03-10"],
    }
    before = (await client.post(QUERY, json=body, headers=viewer)).json()
    assert before["totals"] == {"sessions": 1, "engaged_sessions": 0, "bounce_rate": 1.0}
    # The session's second page view arrives later and falls on the next day: the
    # session is engaged, so 10 March's figures change.
    await load("acme", [make_event("2026-03-11T00:00:05Z", user_id="u", session_id="s")])
    await settle(app, db_sessions)  # the import's notification reached the app
    after = (await client.post(QUERY, json=body, headers=viewer)).json()
    assert after["meta"]["source"] == "rollups"
    assert after["totals"] == {"sessions": 1, "engaged_sessions": 1, "bounce_rate": 0.0}
    # A late event for an old day itself.
    await load("acme", [make_event("2026-03-10T08:00:00Z", user_id="v", session_id="t")])
    await settle(app, db_sessions)
    late = (await client.post(QUERY, json=body, headers=viewer)).json()
    assert late["totals"]["sessions"] == 2


async def test_run_query_is_the_public_engine(
    make_tenant: TenantMaker, load: EventLoader, db_sessions: Sessions
) -> None:
    await _seed_march(make_tenant, load)
    async with db_sessions() as session:
        result = await run_query(
            session,
            "acme",
            StatsQuery(
                metrics=["users", "conversions"],
                date_range="7d",
                compare="previous_period",
            ),
            now=datetime(2026, 3, 11, 12, tzinfo=UTC),
        )
    assert result.meta.date_range == ["2026-03-05", "2026-03-11"]
    assert result.totals == {"users": 3, "conversions": 1}
    assert result.comparison is not None
    assert result.comparison.totals == {"users": 0, "conversions": 0}


async def test_timezone_and_conversion_changes_bypass_stale_rollups(
    make_tenant: TenantMaker, load: EventLoader, db_sessions: Sessions
) -> None:
    from app.modules.events.rollups import rebuild_rollups
    from app.modules.tenants import TenantSettings, TenantUpdate, update_tenant

    await make_tenant("acme", timezone="UTC", conversions=["purchase"])
    # 23:30 UTC on the 10th is the 11th in Berlin.
    await load(
        "acme",
        [
            make_event("2026-03-10T23:30:00Z", "signup", user_id="u", session_id="s"),
            make_event("2026-03-10T12:00:00Z", "purchase", user_id="v", session_id="t"),
        ],
    )
    query = StatsQuery(
        metrics=["events", "conversions"],
        dimensions=["event_name"],
        date_range=["2026-03-11", "2026-03-11"],
    )
    async with db_sessions() as session:
        before = await run_query(session, "acme", query)
        assert before.totals == {"events": 0, "conversions": 0}
        await update_tenant(session, "acme", TenantUpdate(timezone="Europe/Berlin"))
        await session.commit()
        # Day rollups were built in UTC: the engine no longer uses them for Berlin days
        # (the breakdown comes from raw events, the total from UTC hours).
        moved = await run_query(session, "acme", query)
        assert moved.meta.source == "mixed"
        assert moved.totals == {"events": 1, "conversions": 0}
        assert [r.dimensions["event_name"] for r in moved.rows] == ["signup"]
        # Other conversion events: rollups are bypassed until rebuilt.
        await update_tenant(
            session,
            "acme",
            TenantUpdate(settings=TenantSettings(conversion_events=["signup"])),
        )
        await session.commit()
        bypassed = await run_query(session, "acme", query)
        assert bypassed.meta.source == "events"
        assert bypassed.totals == {"events": 1, "conversions": 1}
        await rebuild_rollups(session, "acme")
        await session.commit()
        rebuilt = await run_query(session, "acme", query)
        assert rebuilt.meta.source == "rollups"
        assert rebuilt.totals == {"events": 1, "conversions": 1}
        assert [r.dimensions["event_name"] for r in rebuilt.rows] == ["signup"]


async def test_a_daily_series_counts_each_days_users_and_sessions_exactly(
    client: httpx.AsyncClient, make_tenant: TenantMaker, load: EventLoader, viewer: dict[str, str]
) -> None:
    """A day is one rollup row, which holds its exact distinct counts: no sketch estimate
    (thousands of users, where a HyperLogLog estimate is typically off by a few)."""
    await make_tenant("acme", timezone="UTC")
    per_day = {"2026-03-10": 5000, "2026-03-11": 3100}
    events = [
        make_event(f"{day}T{i % 24:02d}:00:00Z", user_id=f"{day}-u{i}", session_id=f"s{i}")
        for day, users in per_day.items()
        for i in range(users)
    ]
    await load("acme", events)
    params = {
        "metrics": "users,sessions",
        "interval": "day",
        "date_range": "2026-03-10,2026-03-11",
    }
    result = (await client.get(f"{BASE}/timeseries", params=params, headers=viewer)).json()
    assert result["meta"]["source"] == "rollups"
    assert [(r["metrics"]["users"], r["metrics"]["sessions"]) for r in result["rows"]] == [
        (5000, 5000),
        (3100, 3100),
    ]
    # Both days together are a union of sketches again: an estimate within its bound.
    summary = (
        await client.get(
            f"{BASE}/summary", params={"date_range": "2026-03-10,2026-03-11"}, headers=viewer
        )
    ).json()
    bound = summary["meta"]["approximate"]["users"]["relative_error"]
    assert abs(summary["totals"]["users"] - 8100) <= 8100 * bound
