"""Per-tenant facts a stats answer depends on, kept in process memory.

A cached answer must not touch the database, yet its key depends on the tenant's
timezone and conversion events (tenants module), its data version, first event and
rollup state (events module). They change rarely, and whatever changes them makes
PostgreSQL send ``NOTIFY pulse_invalidate, '<tenant_id>'`` in the same transaction
(migration 0006), which drops the tenant's entry here (:mod:`app.core.notify`).

While the listener is down, entries older than ``fallback_ttl_s`` are not trusted;
when it reconnects everything is dropped (changes may have been missed). A load that
started before an invalidation does not store what it read (it may predate the change).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, tzinfo

from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.dashboard.service import TenantCalendar
from app.modules.events import DataFacts, RollupState, data_facts
from app.modules.tenants import get_tenant_config


@dataclass(frozen=True)
class TenantFacts:
    calendar: TenantCalendar
    data: DataFacts

    def first_event_day(self, zone: tzinfo) -> date | None:
        first = self.data.first_event_hour
        return first.astimezone(zone).date() if first is not None else None

    @property
    def rollups(self) -> RollupState | None:
        data = self.data
        if data.rollup_timezone is None or data.rollup_conversion_events is None:
            return None
        return RollupState(data.rollup_timezone, data.rollup_conversion_events)

    def cache_key_part(self) -> str:
        """Everything besides the query and the data version that shapes an answer."""
        built = self.rollups
        rollups = f"{built.timezone}:{','.join(built.conversion_events)}" if built else "-"
        return f"{','.join(self.calendar.conversion_events)}|{rollups}"


async def read_tenant_facts(session: AsyncSession, tenant_id: str) -> TenantFacts:
    """Read the facts through the owning modules' public functions (two statements)."""
    config = await get_tenant_config(session, tenant_id)
    calendar = TenantCalendar(config.timezone, tuple(sorted(config.conversion_events)))
    return TenantFacts(calendar, await data_facts(session, tenant_id))


class TenantFactsCache:
    """Tenant id -> :class:`TenantFacts`, invalidated by notifications."""

    def __init__(
        self,
        *,
        listener_live: Callable[[], bool],
        fallback_ttl_s: float,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._live = listener_live
        self._ttl = fallback_ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, TenantFacts]] = {}
        # Bumped by every invalidation: a load that saw another stamp stores nothing.
        self._changes = 0
        self._inflight: dict[str, asyncio.Future[TenantFacts]] = {}
        self.loads = 0
        self.invalidations = 0
        self.last_invalidated: str | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tenant_id: str) -> TenantFacts | None:
        entry = self._entries.get(tenant_id)
        if entry is None:
            return None
        loaded_at, facts = entry
        if not self._live() and self._clock() - loaded_at > self._ttl:
            del self._entries[tenant_id]
            return None
        return facts

    def stamp(self) -> int:
        """Take before reading facts from the database; give to :meth:`put`."""
        return self._changes

    def put(self, tenant_id: str, facts: TenantFacts, stamp: int) -> None:
        self.loads += 1
        if stamp != self._changes:
            return  # invalidated while it was being read: it may be stale already
        if len(self._entries) >= self._max and tenant_id not in self._entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[tenant_id] = (self._clock(), facts)

    async def get_or_load(
        self, tenant_id: str, load: Callable[[], Awaitable[TenantFacts]]
    ) -> TenantFacts:
        """The cached facts, or ``load()``'s (one load per tenant at a time)."""
        facts = self.get(tenant_id)
        if facts is not None:
            return facts
        pending = self._inflight.get(tenant_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[TenantFacts] = asyncio.get_running_loop().create_future()
        self._inflight[tenant_id] = future
        stamp = self.stamp()
        try:
            facts = await load()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: followers re-raise it, or nobody waited
            raise
        finally:
            if self._inflight.get(tenant_id) is future:
                del self._inflight[tenant_id]
        self.put(tenant_id, facts, stamp)
        future.set_result(facts)
        return facts

    def invalidate(self, tenant_id: str) -> None:
        """The database says ``tenant_id``'s facts changed (a notification's payload)."""
        self.invalidations += 1
        self.last_invalidated = tenant_id
        self._changes += 1
        self._entries.pop(tenant_id, None)
        self._inflight.pop(tenant_id, None)  # later callers must not join an older read

    def clear(self) -> None:
        """Drop everything (the listener reconnected: notifications may have been missed)."""
        self._changes += 1
        self._entries.clear()
        self._inflight.clear()
