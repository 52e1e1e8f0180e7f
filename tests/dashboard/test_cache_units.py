"""Units of the stats hot path: the token bucket, the tenant facts cache and the
encoded answers."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from app.modules.dashboard.cache import RateLimiter, encode_answer
from app.modules.dashboard.facts import TenantFacts, TenantFactsCache
from app.modules.dashboard.schemas import StatsMeta, StatsResult, StatsRow
from app.modules.dashboard.service import TenantCalendar
from app.modules.events import DataFacts, DataVersion


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_default_limit_lets_100_users_load_a_dashboard_together() -> None:
    clock = Clock()
    limiter = RateLimiter(6000, burst=1000, clock=clock)
    # 100 users open a page of 6 widgets at the same instant...
    assert all(limiter.hit("acme").allowed for _ in range(600))
    # ...and keep one request per second each (the refill rate) for a minute.
    for _ in range(60):
        clock.now += 1.0
        assert all(limiter.hit("acme").allowed for _ in range(100))


def test_token_bucket_refuses_past_the_burst_and_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(60, burst=3, clock=clock)
    decisions = [limiter.hit("acme") for _ in range(3)]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    refused = limiter.hit("acme")
    assert not refused.allowed
    assert refused.headers()["Retry-After"] == "1"
    assert refused.headers()["RateLimit-Policy"] == "3;w=3"
    assert limiter.hit("globex").allowed  # per tenant
    clock.now += 1.0
    assert limiter.hit("acme").allowed
    assert not limiter.hit("acme").allowed


def _facts(version: int = 1) -> TenantFacts:
    return TenantFacts(
        TenantCalendar("UTC", ("purchase",)),
        DataFacts(
            version=DataVersion(version=version, fresh_until=None),
            first_event_hour=datetime(2026, 3, 1, 23, tzinfo=UTC),
            rollup_timezone="UTC",
            rollup_conversion_events=("purchase",),
        ),
    )


def test_facts_live_until_notified_while_the_listener_is_up() -> None:
    clock, live = Clock(), [True]
    cache = TenantFactsCache(listener_live=lambda: live[0], fallback_ttl_s=2.0, clock=clock)
    cache.put("acme", _facts(), cache.stamp())
    clock.now += 3600
    assert cache.get("acme") == _facts()
    cache.invalidate("acme")
    assert cache.get("acme") is None


def test_facts_fall_back_to_the_ttl_while_the_listener_is_down() -> None:
    clock, live = Clock(), [True]
    cache = TenantFactsCache(listener_live=lambda: live[0], fallback_ttl_s=2.0, clock=clock)
    cache.put("acme", _facts(), cache.stamp())
    live[0] = False
    clock.now += 1.0
    assert cache.get("acme") is not None
    clock.now += 1.5
    assert cache.get("acme") is None


def test_facts_read_before_an_invalidation_are_not_stored() -> None:
    cache = TenantFactsCache(listener_live=lambda: True, fallback_ttl_s=2.0)
    stamp = cache.stamp()
    cache.invalidate("acme")  # a change committed while the old facts were being read
    cache.put("acme", _facts(), stamp)
    assert cache.get("acme") is None
    cache.put("acme", _facts(2), cache.stamp())
    cache.clear()
    assert len(cache) == 0


def test_first_event_day_is_the_local_day_of_the_first_hour() -> None:
    from zoneinfo import ZoneInfo

    facts = _facts()
    assert facts.first_event_day(ZoneInfo("UTC")).isoformat() == "2026-03-01"
    assert facts.first_event_day(ZoneInfo("Asia/Kolkata")).isoformat() == "2026-03-02"


def test_an_encoded_answer_differs_from_its_cached_copy_only_in_the_flag() -> None:
    result = StatsResult(
        query={"metrics": ["users"]},
        # A value that spells the flag must stay untouched (it is escaped in JSON).
        rows=[StatsRow(dimensions={"page_path": '"cached":false'}, metrics={"users": 1})],
        totals={"users": 1},
        comparison=None,
        meta=StatsMeta(
            timezone="UTC",
            date_range=["2026-03-01", "2026-03-31"],
            compare_range=None,
            time_labels=None,
            total_rows=1,
            source="rollups",
            fresh_until=None,
            data_version=3,
            cached=False,
            approximate={},
        ),
    )
    miss, hit = encode_answer(result)
    assert msgspec.json.decode(miss, type=StatsResult) == result
    cached = msgspec.json.decode(hit, type=StatsResult)
    assert cached.meta.cached is True
    assert cached.rows == result.rows
    assert msgspec.structs.replace(cached, meta=result.meta) == result
