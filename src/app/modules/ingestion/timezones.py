"""Tenant timezones, loaded off the event loop (ZoneInfo reads tzdata files) and cached."""

from __future__ import annotations

import asyncio
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_cache: dict[str, ZoneInfo] = {}


async def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for ``name``; unknown names fall back to UTC."""
    found = _cache.get(name)
    if found is None:
        try:
            found = await asyncio.to_thread(ZoneInfo, name)
        except (ZoneInfoNotFoundError, ValueError):
            found = await asyncio.to_thread(ZoneInfo, "UTC")
        _cache[name] = found
    return found
