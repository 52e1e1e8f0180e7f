"""IANA time zones: one cached lookup, one error and one fallback for the whole app.

``ZoneInfo`` reads tzdata files on first use, so a name's first load runs off the event
loop; later loads are a dict hit. Loaded zones are kept for the life of the process (there
are a few hundred names at most, and only well-formed ones are tried).
"""

from __future__ import annotations

import asyncio
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

from app.core.errors import Invalid

log = structlog.get_logger("app.timezones")

UTC_ZONE = ZoneInfo("UTC")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,2}$")
_zones: dict[str, ZoneInfo] = {"UTC": UTC_ZONE}


async def load_zone(name: str, *, field: str = "timezone") -> ZoneInfo:
    """The zone called ``name``; :class:`Invalid` (naming ``field``) when there is none."""
    zone = _zones.get(name)
    if zone is not None:
        return zone
    if len(name) > 64 or not _NAME.match(name):
        raise Invalid(f"{name!r} is not an IANA timezone name", field=field)
    try:
        zone = await asyncio.to_thread(ZoneInfo, name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise Invalid(f"unknown timezone {name!r}", field=field) from None
    _zones[name] = zone
    return zone


async def zone_or_utc(name: str) -> ZoneInfo:
    """The zone called ``name``, or UTC (with a warning) for a name that stored data holds
    but this machine's tz database does not know."""
    try:
        return await load_zone(name)
    except Invalid:
        log.warning("timezone.unknown_using_utc", timezone=name)
        return UTC_ZONE
