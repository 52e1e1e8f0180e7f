"""What a tenant's rollups were built with (``stats_rollup_state``): the timezone and
conversion events, and whether the session facts are built. Loads read it to choose
between adding their rows and rebuilding days; the query engine to know which rows
answer."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class RollupState:
    """What a tenant's rollups were built with."""

    timezone: str
    conversion_events: tuple[str, ...]


async def rollup_state(session: AsyncSession, tenant_id: str) -> RollupState | None:
    """The timezone and conversion events of the tenant's rollups (None: never built)."""
    row = (
        await session.execute(
            sql_text(
                "SELECT timezone, conversion_events FROM stats_rollup_state"
                " WHERE tenant_id = :tenant_id"
            ),
            {"tenant_id": tenant_id},
        )
    ).one_or_none()
    if row is None:
        return None
    return RollupState(row.timezone, tuple(row.conversion_events))


async def sessions_built(session: AsyncSession, tenant_id: str) -> bool:
    """Whether the tenant's session facts (``stats_sessions``) match its rollups."""
    found = await session.execute(
        sql_text("SELECT sessions_built FROM stats_rollup_state WHERE tenant_id = :tenant_id"),
        {"tenant_id": tenant_id},
    )
    return bool(found.scalar())
