"""The event store's facts a cached dashboard answer depends on, read in one statement.

The dashboard keeps them in memory per tenant and drops them when the database notifies
a change (migration 0006: triggers on ``tenant_data_versions`` and ``stats_rollup_state``;
events only change together with a data version bump).
"""

from __future__ import annotations

from datetime import datetime

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.events.service import DataVersion

_DATA_FACTS = text(
    """
    SELECT v.version, v.fresh_until, s.timezone AS rollup_timezone,
           s.conversion_events AS rollup_conversion_events,
           (SELECT min(e.occurred_at) FROM events e WHERE e.tenant_id = :t) AS first_event_at
    FROM (SELECT 1) AS one
    LEFT JOIN tenant_data_versions v ON v.tenant_id = :t
    LEFT JOIN stats_rollup_state s ON s.tenant_id = :t
    """
)


class DataFacts(msgspec.Struct, frozen=True):
    """A tenant's data version, the start of the UTC hour of its first event (None: no
    events), and the timezone and conversion events its rollups were built with (None:
    never built)."""

    version: DataVersion
    first_event_hour: datetime | None
    rollup_timezone: str | None
    rollup_conversion_events: tuple[str, ...] | None


async def data_facts(session: AsyncSession, tenant_id: str) -> DataFacts:
    """Read the tenant's :class:`DataFacts` (one statement)."""
    row = (await session.execute(_DATA_FACTS, {"t": tenant_id})).one()
    first: datetime | None = row.first_event_at
    return DataFacts(
        version=DataVersion(version=int(row.version or 0), fresh_until=row.fresh_until),
        # The hour bucket, as the rollups' first bucket (what "all" starts from).
        first_event_hour=first.replace(minute=0, second=0, microsecond=0) if first else None,
        rollup_timezone=row.rollup_timezone,
        rollup_conversion_events=(
            tuple(row.rollup_conversion_events)
            if row.rollup_conversion_events is not None
            else None
        ),
    )
