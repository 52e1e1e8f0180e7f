"""What the notifications module needs to know about a tenant: its name and timezone."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound
from app.modules.tenants.models import Tenant

log = structlog.get_logger("app.notifications")

_zones: dict[str, ZoneInfo] = {}


@dataclass(frozen=True, slots=True)
class TenantProfile:
    id: str
    name: str
    timezone: ZoneInfo


async def zone(name: str) -> ZoneInfo:
    """``ZoneInfo(name)`` without reading tzdata files on the event loop (cached)."""
    cached = _zones.get(name)
    if cached is not None:
        return cached
    try:
        loaded = await asyncio.to_thread(ZoneInfo, name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("notifications.unknown_timezone", timezone=name)
        loaded = await zone("UTC") if name != "UTC" else ZoneInfo("UTC")
    _zones[name] = loaded
    return loaded


async def tenant_profile(
    session: AsyncSession, tenant_id: str, *, required: bool = False
) -> TenantProfile:
    """The tenant's name and timezone; with ``required``, NotFound when there is no tenant."""
    # TODO(tenants): switch to the tenants module's public get_tenant() once it lands;
    # until then this reads the two columns it needs from the foundation's tenants table.
    row = (
        await session.execute(select(Tenant.name, Tenant.timezone).where(Tenant.id == tenant_id))
    ).one_or_none()
    if row is None:
        if required:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        return TenantProfile(id=tenant_id, name=tenant_id, timezone=await zone("UTC"))
    return TenantProfile(id=tenant_id, name=row.name, timezone=await zone(row.timezone))
