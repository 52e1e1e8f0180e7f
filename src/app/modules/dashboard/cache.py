"""The stats response cache and the per-tenant rate limit (both per process).

Cache keys are (tenant, normalised query, data version): a load that commits bumps
the tenant's data version, so the next query misses and old entries age out of the
LRU. Identical queries that miss at the same time share one computation.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

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

    def clear_tenant(self, tenant_id: str) -> None:
        for key in [k for k in self._entries if k[0] == tenant_id]:
            del self._entries[key]

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

    def headers(self) -> dict[str, str]:
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
            "RateLimit-Policy": f"{self.limit};w=60",
        }
        if not self.allowed:
            out["Retry-After"] = str(self.reset_s)
        return out


class RateLimiter:
    """A fixed one-minute window per tenant: ``limit`` requests, then 429 until it ends."""

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def hit(self, tenant_id: str) -> RateDecision:
        now = self._clock()
        start, count = self._windows.get(tenant_id, (now, 0))
        if now - start >= 60:
            start, count = now, 0
        reset = max(1, math.ceil(start + 60 - now))
        if count >= self.limit:
            self._windows[tenant_id] = (start, count)
            return RateDecision(False, self.limit, 0, reset)
        count += 1
        self._windows[tenant_id] = (start, count)
        if len(self._windows) > 100_000:  # forget idle tenants; bounded memory
            self._windows = {t: w for t, w in self._windows.items() if now - w[0] < 60}
        return RateDecision(True, self.limit, self.limit - count, reset)
