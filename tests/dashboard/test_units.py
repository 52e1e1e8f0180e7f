"""Pure parts of the dashboard: presets, comparisons, cache, rate limit, CSV cells."""

from __future__ import annotations

import asyncio
from datetime import date

import msgspec
import pytest

from app.core.errors import Invalid
from app.modules.dashboard.cache import StatsCache
from app.modules.dashboard.export import csv_chunks, neutralise
from app.modules.dashboard.parsing import normalise, preset_range
from app.modules.dashboard.schemas import StatsMeta, StatsQuery, StatsResult, StatsRow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("preset", "today", "first", "last"),
    [
        ("today", date(2026, 3, 1), date(2026, 3, 1), date(2026, 3, 1)),
        ("yesterday", date(2026, 3, 1), date(2026, 2, 28), date(2026, 2, 28)),
        ("7d", date(2026, 3, 1), date(2026, 2, 23), date(2026, 3, 1)),
        ("month", date(2026, 3, 15), date(2026, 3, 1), date(2026, 3, 15)),
        ("last_month", date(2026, 1, 15), date(2025, 12, 1), date(2025, 12, 31)),
        ("12mo", date(2026, 3, 31), date(2025, 4, 1), date(2026, 3, 31)),
        ("year", date(2026, 3, 31), date(2026, 1, 1), date(2026, 3, 31)),
    ],
)
def test_presets(preset: str, today: date, first: date, last: date) -> None:
    span = preset_range(preset, today, None)
    assert (span.first, span.last) == (first, last)


def test_all_preset_starts_at_the_first_event_or_today() -> None:
    assert preset_range("all", date(2026, 3, 1), date(2025, 7, 4)).first == date(2025, 7, 4)
    assert preset_range("all", date(2026, 3, 1), None).first == date(2026, 3, 1)


def test_comparisons_and_normalised_key() -> None:
    def norm(**kwargs: object) -> object:
        return normalise(
            StatsQuery(metrics=["users"], **kwargs),  # type: ignore[arg-type]
            timezone="UTC",
            today=date(2028, 3, 10),
            first_event=None,
        )

    previous = norm(date_range=["2028-03-01", "2028-03-10"], compare="previous_period")
    assert previous.compare.as_list() == ["2028-02-20", "2028-02-29"]  # type: ignore[attr-defined]
    yoy = norm(date_range=["2028-02-29", "2028-02-29"], compare="year_over_year")
    assert yoy.compare.as_list() == ["2027-02-28", "2027-02-28"]  # type: ignore[attr-defined]
    a = norm(filters=[["is", "country", ["US", "DE"]]], dimensions=["country"])
    b = norm(filters=[["is", "country", ["DE", "US", "DE"]]], dimensions=["country", "country"])
    assert a.cache_key() == b.cache_key()  # type: ignore[attr-defined]
    with pytest.raises(Invalid) as raised:
        norm(limit=10_001)
    assert raised.value.extra["field"] == "limit"


async def test_cache_expires_evicts_and_computes_once() -> None:
    clock = Clock()
    cache: StatsCache[int] = StatsCache(ttl_s=10, max_entries=2, clock=clock)
    calls = 0
    gate = asyncio.Event()

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 42

    key = ("acme", "q", 1)
    leader = asyncio.create_task(cache.get_or_compute(key, compute))
    follower = asyncio.create_task(cache.get_or_compute(key, compute))
    await asyncio.sleep(0)
    gate.set()
    assert await leader == (42, False)
    assert await follower == (42, True)
    assert calls == 1
    assert await cache.get_or_compute(key, compute) == (42, True)
    clock.now += 11
    assert cache.get(key) is None
    cache.put(("acme", "a", 1), 1)
    cache.put(("acme", "b", 1), 2)
    cache.put(("acme", "c", 1), 3)
    assert len(cache) == 2
    assert cache.get(("acme", "a", 1)) is None


async def test_cache_failure_is_not_cached() -> None:
    cache: StatsCache[int] = StatsCache(ttl_s=10, max_entries=10)

    async def boom() -> int:
        raise RuntimeError("db down")

    with pytest.raises(RuntimeError):
        await cache.get_or_compute(("t", "q", 1), boom)
    assert cache.get(("t", "q", 1)) is None


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+SUM(A1)", "'+SUM(A1)"),
        ("-2", "'-2"),
        ("@cmd", "'@cmd"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("/a=b", "/a=b"),
        (-0.5, -0.5),
        (None, ""),
    ],
)
def test_neutralise(value: object, cell: object) -> None:
    assert neutralise(value) == cell


def test_csv_of_a_cached_answer_equals_the_csv_of_a_fresh_one() -> None:
    """A cached answer is decoded from JSON, where every metric is a number (a float
    here): its CSV must still write whole numbers as the fresh answer does."""
    fresh = StatsResult(
        query={"dimensions": ["page_path"], "metrics": ["users", "bounce_rate"]},
        rows=[StatsRow(dimensions={"page_path": "/a"}, metrics={"users": 28, "bounce_rate": 0.5})],
        totals={"users": 28, "bounce_rate": 0.5},
        comparison=None,
        meta=StatsMeta(
            timezone="UTC",
            date_range=["2026-03-01", "2026-03-30"],
            compare_range=None,
            time_labels=None,
            total_rows=1,
            source="rollups",
            fresh_until=None,
            data_version=1,
            cached=False,
            approximate={},
        ),
    )
    decoded = msgspec.json.decode(msgspec.json.encode(fresh), type=StatsResult)
    assert isinstance(decoded.rows[0].metrics["users"], float)
    assert "".join(csv_chunks(decoded)) == "".join(csv_chunks(fresh))
    assert "".join(csv_chunks(fresh)).splitlines()[1] == "/a,28,0.5"
