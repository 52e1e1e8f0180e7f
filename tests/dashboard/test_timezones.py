"""Daylight-saving boundaries: hourly and daily buckets in Europe/Berlin and
America/New_York, answered from rollups and from raw events alike."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.events import EventLoader, TenantMaker, make_event

QUERY = "/api/v1/tenants/acme/stats/query"
# Filters on two different dimensions that every event passes force the raw-events path.
FORCE_RAW = [["is_not", "country", ["XX"]], ["is_not", "city", ["XX"]]]
PATHS = pytest.mark.parametrize(("filters", "source"), [([], "rollups"), (FORCE_RAW, "events")])


async def _query(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post(QUERY, json={"metrics": ["events"], **body}, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _series(result: dict[str, Any], dimension: str) -> dict[str, int]:
    return {r["dimensions"][dimension]: r["metrics"]["events"] for r in result["rows"]}


@PATHS
async def test_berlin_autumn_day_has_25_hours_and_the_repeated_hour_twice(
    client: httpx.AsyncClient,
    make_tenant: TenantMaker,
    load: EventLoader,
    auth_headers: Any,
    filters: list[Any],
    source: str,
) -> None:
    await make_tenant("acme", timezone="Europe/Berlin")
    await load(
        "acme",
        [
            make_event("2026-10-24T21:59:00Z"),  # 23:59 CEST on the 24th
            make_event("2026-10-24T22:00:00Z"),  # 00:00 CEST on the 25th
            make_event("2026-10-25T00:30:00Z"),  # 02:30 CEST (first 02:00 hour)
            make_event("2026-10-25T01:30:00Z"),  # 02:30 CET (second 02:00 hour)
            make_event("2026-10-25T01:45:00Z"),  # 02:45 CET
            make_event("2026-10-25T22:59:00Z"),  # 23:59 CET on the 25th
            make_event("2026-10-25T23:00:00Z"),  # 00:00 CET on the 26th
        ],
    )
    headers = auth_headers("acme", "viewer")
    hourly = await _query(
        client,
        headers,
        dimensions=["time:hour"],
        date_range=["2026-10-25", "2026-10-25"],
        filters=filters,
    )
    assert hourly["meta"]["source"] == source
    labels = hourly["meta"]["time_labels"]
    assert len(labels) == 25
    assert labels[:4] == [
        "2026-10-25T00:00:00+02:00",
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
    ]
    assert labels[-1] == "2026-10-25T23:00:00+01:00"
    series = _series(hourly, "time:hour")
    assert series["2026-10-25T00:00:00+02:00"] == 1
    assert series["2026-10-25T02:00:00+02:00"] == 1
    assert series["2026-10-25T02:00:00+01:00"] == 2
    assert series["2026-10-25T23:00:00+01:00"] == 1
    assert sum(series.values()) == 5
    daily = await _query(
        client,
        headers,
        dimensions=["time:day"],
        date_range=["2026-10-24", "2026-10-26"],
        filters=filters,
    )
    assert _series(daily, "time:day") == {"2026-10-24": 1, "2026-10-25": 5, "2026-10-26": 1}


@PATHS
async def test_berlin_spring_day_has_23_hours(
    client: httpx.AsyncClient,
    make_tenant: TenantMaker,
    load: EventLoader,
    auth_headers: Any,
    filters: list[Any],
    source: str,
) -> None:
    await make_tenant("acme", timezone="Europe/Berlin")
    await load(
        "acme",
        [
            make_event("2026-03-29T00:30:00Z"),  # 01:30 CET
            make_event("2026-03-29T01:30:00Z"),  # 03:30 CEST (02:00 does not exist)
            make_event("2026-03-29T21:59:00Z"),  # 23:59 CEST
            make_event("2026-03-29T22:00:00Z"),  # 00:00 on the 30th
        ],
    )
    headers = auth_headers("acme", "viewer")
    hourly = await _query(
        client,
        headers,
        dimensions=["time:hour"],
        date_range=["2026-03-29", "2026-03-29"],
        filters=filters,
    )
    assert hourly["meta"]["source"] == source
    labels = hourly["meta"]["time_labels"]
    assert len(labels) == 23
    assert labels[1:3] == ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00"]
    series = _series(hourly, "time:hour")
    assert series["2026-03-29T01:00:00+01:00"] == 1
    assert series["2026-03-29T03:00:00+02:00"] == 1
    assert series["2026-03-29T23:00:00+02:00"] == 1
    weekly = await _query(
        client,
        headers,
        dimensions=["time:week"],
        date_range=["2026-03-23", "2026-04-05"],
        filters=filters,
    )
    # Weeks start on Monday: the 29th (Sunday) closes the first week.
    assert _series(weekly, "time:week") == {"2026-03-23": 3, "2026-03-30": 1}


@PATHS
async def test_new_york_daylight_saving_in_march_and_november(
    client: httpx.AsyncClient,
    make_tenant: TenantMaker,
    load: EventLoader,
    auth_headers: Any,
    filters: list[Any],
    source: str,
) -> None:
    await make_tenant("acme", timezone="UTC")
    await load(
        "acme",
        [
            make_event("2026-03-08T06:30:00Z"),  # 01:30 EST
            make_event("2026-03-08T07:30:00Z"),  # 03:30 EDT
            make_event("2026-03-09T03:59:00Z"),  # 23:59 EDT on the 8th
            make_event("2026-11-01T05:30:00Z"),  # 01:30 EDT
            make_event("2026-11-01T06:30:00Z"),  # 01:30 EST
            make_event("2026-11-02T04:59:00Z"),  # 23:59 EST on 1 November
            make_event("2026-11-02T05:00:00Z"),  # 00:00 on 2 November
        ],
    )
    headers = auth_headers("acme", "viewer")
    zone = {"timezone": "America/New_York", "filters": filters}
    march = await _query(
        client, headers, dimensions=["time:hour"], date_range=["2026-03-08", "2026-03-08"], **zone
    )
    assert march["meta"]["source"] == source
    assert march["meta"]["timezone"] == "America/New_York"
    assert len(march["meta"]["time_labels"]) == 23
    assert _series(march, "time:hour")["2026-03-08T03:00:00-04:00"] == 1
    november = await _query(
        client, headers, dimensions=["time:hour"], date_range=["2026-11-01", "2026-11-01"], **zone
    )
    assert len(november["meta"]["time_labels"]) == 25
    series = _series(november, "time:hour")
    assert series["2026-11-01T01:00:00-04:00"] == 1
    assert series["2026-11-01T01:00:00-05:00"] == 1
    assert series["2026-11-01T23:00:00-05:00"] == 1
    daily = await _query(
        client, headers, dimensions=["time:day"], date_range=["2026-03-08", "2026-03-08"], **zone
    )
    assert _series(daily, "time:day") == {"2026-03-08": 3}
    monthly = await _query(
        client,
        headers,
        dimensions=["time:month"],
        date_range=["2026-10-01", "2026-11-30"],
        **zone,
    )
    assert _series(monthly, "time:month") == {"2026-10-01": 0, "2026-11-01": 4}


async def test_half_hour_zone_is_answered_exactly_from_raw_events(
    client: httpx.AsyncClient, make_tenant: TenantMaker, load: EventLoader, auth_headers: Any
) -> None:
    await make_tenant("acme")
    await load(
        "acme",
        [make_event("2026-03-10T18:29:00Z"), make_event("2026-03-10T18:30:00Z")],
    )  # 23:59 and 00:00 in India (+05:30)
    result = await _query(
        client,
        auth_headers("acme", "viewer"),
        dimensions=["time:day"],
        date_range=["2026-03-10", "2026-03-11"],
        timezone="Asia/Kolkata",
    )
    assert result["meta"]["source"] == "events"
    assert _series(result, "time:day") == {"2026-03-10": 1, "2026-03-11": 1}
