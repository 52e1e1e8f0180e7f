"""Rules written once in core: time zones (one lookup, one error, one fallback) and the
retry backoff with jitter."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from app.core.backoff import backoff_s
from app.core.errors import Invalid
from app.core.timezones import load_zone, zone_or_utc


async def test_a_zone_is_loaded_once_and_then_served_from_memory() -> None:
    first = await load_zone("America/New_York")
    assert first == ZoneInfo("America/New_York")
    assert await load_zone("America/New_York") is first


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "../etc/passwd", "x" * 70, ""])
async def test_an_unknown_or_malformed_zone_is_invalid_and_names_the_field(name: str) -> None:
    with pytest.raises(Invalid) as raised:
        await load_zone(name, field="tenant.timezone")
    assert raised.value.extra["field"] == "tenant.timezone"


async def test_stored_data_with_an_unknown_zone_falls_back_to_utc() -> None:
    assert await zone_or_utc("Mars/Olympus_Mons") == ZoneInfo("UTC")
    assert await zone_or_utc("Europe/Berlin") == ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize("attempt", [0, 1, 2, 5, 10, 1000])
def test_backoff_doubles_from_the_base_up_to_the_cap_scaled_by_half_to_all(attempt: int) -> None:
    ceiling = min(900.0, 30.0 * 2.0 ** max(0, attempt - 1))
    for _ in range(50):
        delay = backoff_s(attempt, base_s=30.0, max_s=900.0)
        assert ceiling * 0.5 <= delay <= ceiling
