"""The stats response cache and the per-tenant rate limit (both per process).

Cache keys are (tenant, normalised query + the tenant's conversion events and rollup
state, data version): a load that commits bumps the tenant's data version, so the next
query misses and old entries age out of the LRU. Values are the encoded JSON, so a hit
does not encode again. Identical queries that miss at the same time share one
computation.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from app.modules.dashboard.schemas import StatsResult

T = TypeVar("T")
CacheKey = tuple[str, str, int]


class StatsCache(Generic[T]):
    """A bounded LRU with a time to live and single-flight misses."""

    def __init__(
        self, *, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, T]] = OrderedDict()
        self._inflight: dict[CacheKey, asyncio.Future[T]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: CacheKey, value: T) -> None:
        self._entries[key] = (self._clock() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def get_or_compute(
        self, key: CacheKey, compute: Callable[[], Awaitable[T]]
    ) -> tuple[T, bool]:
        """The cached value (and True), or the computed one (False), computed once."""
        value = self.get(key)
        if value is not None:
            self.hits += 1
            return value, True
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            # shield: a follower that is cancelled must not cancel the leader's work.
            return await asyncio.shield(pending), True
        self.misses += 1
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await compute()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            # Followers re-raise it; mark it retrieved in case nobody was waiting.
            future.exception()
            raise
        finally:
            self._inflight.pop(key, None)
        self.put(key, value)
        future.set_result(value)
        return value, False


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int
    window_s: int

    def headers(self) -> dict[str, str]:
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
            "RateLimit-Policy": f"{self.limit};w={self.window_s}",
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


class RateLimiter:
    """A token bucket per tenant: holds up to ``burst`` requests and refills at
    ``per_minute``. A dashboard page load (several widgets, many users at once) spends
    from the burst; the refill rate is the sustained limit. Per process."""

    def __init__(
        self, per_minute: int, *, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = burst
        self.rate_per_s = per_minute / 60
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)
        self._window_s = max(1, math.ceil(burst / self.rate_per_s))

    def hit(self, tenant_id: str) -> RateDecision:
        now = self._clock()
        tokens, at = self._buckets.get(tenant_id, (float(self.limit), now))
        tokens = min(float(self.limit), tokens + (now - at) * self.rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[tenant_id] = (tokens, now)
        if len(self._buckets) > 100_000:  # forget full buckets; bounded memory
            self._forget_full(now)
        return RateDecision(
            allowed=allowed,
            limit=self.limit,
            remaining=int(tokens),
            reset_s=max(1, math.ceil((self.limit - tokens) / self.rate_per_s)),
            retry_after_s=max(1, math.ceil((1.0 - tokens) / self.rate_per_s)),
            window_s=self._window_s,
        )

    def _forget_full(self, now: float) -> None:
        rate, limit = self.rate_per_s, self.limit
        self._buckets = {
            t: (tokens, at)
            for t, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * rate < limit
        }


_MISS_FLAG = b'"cached":false'
_HIT_FLAG = b'"cached":true'


def encode_answer(result: StatsResult) -> tuple[bytes, bytes]:
    """The JSON of ``result`` as answered on a miss (``meta.cached`` false) and as kept
    for hits (true), encoded once: the flag is the only ``"cached":`` key in the
    document (every string value is escaped), so the hit bytes are a splice."""
    miss = msgspec.json.encode(result)
    at = miss.rfind(_MISS_FLAG)
    if at >= 0 and miss.count(_MISS_FLAG) == 1:
        return miss, miss[:at] + _HIT_FLAG + miss[at + len(_MISS_FLAG) :]
    hit = msgspec.structs.replace(result, meta=msgspec.structs.replace(result.meta, cached=True))
    return miss, msgspec.json.encode(hit)
