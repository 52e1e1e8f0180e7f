"""The demo generator looks like a real site: stable users, one first visit each, realistic
bounce and engagement, and enough history for the default comparison."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta

from app.dev.launcher import DEMO_DAYS, first_run, synthetic_source
from app.modules.ingestion.connectors.synthetic import iter_day_events

START = date(2026, 9, 1)


def _days(count: int, sessions: int = 120, seed: int = 3) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for offset in range(count):
        rows.extend(iter_day_events(seed, START + timedelta(days=offset), sessions))
    return rows


def test_a_user_keeps_one_country_and_device_and_gets_first_visit_once() -> None:
    rows = _days(30)
    countries: dict[object, set[object]] = defaultdict(set)
    devices: dict[object, set[object]] = defaultdict(set)
    first_visits: dict[object, int] = defaultdict(int)
    days_seen: dict[object, set[object]] = defaultdict(set)
    for row in rows:
        user = row["user_id"]
        countries[user].add(row["country"])
        devices[user].add((row["device_category"], row["os"], row["browser"]))
        days_seen[user].add(str(row["occurred_at"])[:10])
        if row["event_name"] == "first_visit":
            first_visits[user] += 1
    assert max(len(c) for c in countries.values()) == 1
    assert max(len(d) for d in devices.values()) == 1
    assert set(first_visits.values()) == {1}
    # New users are a part of all users, not several times their number.
    assert 0.3 < len(first_visits) / len(countries) < 0.9
    # People come back on other days.
    assert sum(1 for d in days_seen.values() if len(d) > 1) > 0.1 * len(days_seen)


def test_bounce_rate_and_engagement_look_like_a_real_site() -> None:
    sessions: dict[object, dict[str, int]] = {}
    for row in _days(14):
        s = sessions.setdefault(row["session_id"], {"views": 0, "msec": 0, "engaged": 0})
        s["views"] += row["event_name"] == "page_view"
        s["msec"] += int(row.get("engagement_time_msec") or 0)  # type: ignore[call-overload]
        s["engaged"] |= bool(row["session_engaged"])
    # GA4's rule (the one the query engine applies): engaged if flagged, 10 s or 2 views.
    engaged = sum(
        1 for s in sessions.values() if s["engaged"] or s["msec"] >= 10_000 or s["views"] >= 2
    )
    bounce = 1 - engaged / len(sessions)
    assert 0.40 <= bounce <= 0.60, bounce
    average_s = sum(s["msec"] for s in sessions.values()) / len(sessions) / 1000
    assert 20 <= average_s <= 180, average_s


def test_the_demo_history_covers_the_default_comparison() -> None:
    # The dashboard opens on 30 days compared with the 30 before.
    assert DEMO_DAYS >= 60
    assert synthetic_source("x", 1, 10)["config"]["days_back"] >= 60
    backfill = first_run({"kind": "bigquery_ga4"})
    start = date.fromisoformat(backfill["start"])
    end = date.fromisoformat(backfill["end"])
    assert (end - start).days + 1 >= 60
    assert first_run({"kind": "synthetic"}) == {}
