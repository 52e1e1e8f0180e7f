"""What the notifications module needs to know about a tenant: its name and timezone,
through the tenants module's public functions."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound
from app.core.timezones import UTC_ZONE, zone_or_utc
from app.modules.tenants import get_tenant

log = structlog.get_logger("app.notifications")


@dataclass(frozen=True, slots=True)
class TenantProfile:
    id: str
    name: str
    timezone: ZoneInfo


async def tenant_profile(
    session: AsyncSession, tenant_id: str, *, required: bool = False
) -> TenantProfile:
    """The tenant's name and timezone; with ``required``, NotFound when there is no tenant."""
    try:
        tenant = await get_tenant(session, tenant_id)
    except NotFound:
        if required:
            raise
        return TenantProfile(id=tenant_id, name=tenant_id, timezone=UTC_ZONE)
    return TenantProfile(
        id=tenant.id, name=tenant.name, timezone=await zone_or_utc(tenant.timezone)
    )
