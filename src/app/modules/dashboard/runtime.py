"""The dashboard's per-process state (response cache, tenant facts, rate limiter) and
the path the routes take: facts from memory, the answer from the cache, and only on a
miss one read connection (:meth:`app.core.db.Database.run_read`) for the query engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, tzinfo

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import Database
from app.core.notify import ChangeListener
from app.core.settings import Settings
from app.modules.dashboard.cache import RateLimiter, StatsCache, encode_answer
from app.modules.dashboard.facts import TenantFacts, TenantFactsCache, read_tenant_facts
from app.modules.dashboard.schemas import StatsQuery, StatsResult
from app.modules.dashboard.service import resolve_query_with, run_normal_query

log = structlog.get_logger("app.dashboard")

# The channel migration 0006's triggers notify, with the tenant id as payload.
INVALIDATE_CHANNEL = "pulse_invalidate"


@dataclass
class StatsRuntime:
    db: Database
    cache: StatsCache[bytes]
    facts: TenantFactsCache
    limiter: RateLimiter

    @classmethod
    def create(cls, settings: Settings, db: Database, listener: ChangeListener) -> StatsRuntime:
        facts = TenantFactsCache(
            listener_live=lambda: listener.live,
            fallback_ttl_s=settings.stats_facts_fallback_ttl_s,
        )
        listener.subscribe(INVALIDATE_CHANNEL, facts.invalidate)
        listener.on_resync(facts.clear)
        return cls(
            db=db,
            cache=StatsCache(
                ttl_s=settings.stats_cache_ttl_s, max_entries=settings.stats_cache_max_entries
            ),
            facts=facts,
            limiter=RateLimiter(
                settings.stats_rate_limit_per_minute, burst=settings.stats_rate_limit_burst
            ),
        )


@dataclass(frozen=True)
class Answer:
    """A stats answer as JSON bytes; ``result`` is there when this request computed it."""

    body: bytes
    cached: bool
    result: StatsResult | None = None

    def stats(self) -> StatsResult:
        if self.result is not None:
            return self.result
        return msgspec.json.decode(self.body, type=StatsResult)


async def tenant_facts(runtime: StatsRuntime, tenant_id: str) -> TenantFacts:
    """The tenant's facts from memory, or read once on one read connection."""

    async def load() -> TenantFacts:
        return await runtime.db.run_read(
            tenant_id, lambda session: read_tenant_facts(session, tenant_id)
        )

    return await runtime.facts.get_or_load(tenant_id, load)


async def answer_query(runtime: StatsRuntime, tenant_id: str, query: StatsQuery) -> Answer:
    """``run_query`` through the caches; the database is used only for what is missing."""
    facts = await tenant_facts(runtime, tenant_id)

    async def first_event_day(_zone_name: str, zone: tzinfo) -> date | None:
        return facts.first_event_day(zone)

    normal, zone = await resolve_query_with(query, facts.calendar, first_event_day)
    version = facts.data.version
    key = (tenant_id, f"{normal.cache_key()}|{facts.cache_key_part()}", version.version)
    computed: list[tuple[StatsResult, bytes]] = []

    async def read(session: AsyncSession) -> StatsResult:
        return await run_normal_query(
            session, tenant_id, normal, zone, facts.calendar, version, rollups=facts.rollups
        )

    async def compute() -> bytes:
        result = await runtime.db.run_read(tenant_id, read)
        miss, hit = encode_answer(result)
        computed.append((result, miss))
        return hit

    body, cached = await runtime.cache.get_or_compute(key, compute)
    log.debug("stats.answered", tenant_id=tenant_id, cached=cached)
    if computed:
        result, miss = computed[0]
        return Answer(miss, False, result)
    return Answer(body, True)
