"""The dashboard's per-process state (response cache, rate limiter) and the cached path
the routes take through :func:`app.modules.dashboard.service.run_normal_query`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.settings import Settings
from app.modules.dashboard.cache import RateLimiter, StatsCache
from app.modules.dashboard.schemas import StatsQuery, StatsResult
from app.modules.dashboard.service import resolve_query, run_normal_query, tenant_calendar
from app.modules.events import get_data_version

log = structlog.get_logger("app.dashboard")


@dataclass
class StatsRuntime:
    cache: StatsCache[StatsResult]
    limiter: RateLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> StatsRuntime:
        return cls(
            cache=StatsCache(
                ttl_s=settings.stats_cache_ttl_s, max_entries=settings.stats_cache_max_entries
            ),
            limiter=RateLimiter(settings.stats_rate_limit_per_minute),
        )


@asynccontextmanager
async def stats_lifespan(app: Litestar) -> AsyncIterator[None]:
    state: Any = app.state
    state.stats = StatsRuntime.from_settings(state.settings)
    yield


async def answer_query(
    runtime: StatsRuntime, session: AsyncSession, tenant_id: str, query: StatsQuery
) -> StatsResult:
    """``run_query`` through the cache: keyed by tenant, normalised query, data version."""
    calendar = await tenant_calendar(session, tenant_id)
    normal, zone = await resolve_query(session, tenant_id, query, calendar)
    version = await get_data_version(session, tenant_id)
    # Conversion events change what the figures mean, so they are part of the key.
    key = (
        tenant_id,
        normal.cache_key() + "|" + ",".join(calendar.conversion_events),
        version.version,
    )

    async def compute() -> StatsResult:
        return await run_normal_query(session, tenant_id, normal, zone, calendar, version)

    result, cached = await runtime.cache.get_or_compute(key, compute)
    if cached:
        result = msgspec.structs.replace(
            result, meta=msgspec.structs.replace(result.meta, cached=True)
        )
    log.debug("stats.answered", tenant_id=tenant_id, cached=cached, source=result.meta.source)
    return result
