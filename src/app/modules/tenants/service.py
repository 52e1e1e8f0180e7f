"""Tenants: create, read, change, delete. Sessions are passed in; nothing commits here;
the SQL is in :mod:`app.modules.tenants.repository`.

Deleting a tenant deletes its row; every tenant-owned table references ``tenants.id``
with ``ON DELETE CASCADE``, so PostgreSQL removes all of the tenant's data in the same
transaction.
"""

from __future__ import annotations

import asyncio
import zoneinfo
from collections.abc import Iterable
from typing import Any

import msgspec
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict, Invalid, NotFound, is_database_unavailable
from app.modules.tenants import models, repository
from app.modules.tenants.schemas import (
    DEFAULT_CONVERSION_EVENTS,
    Tenant,
    TenantConfig,
    TenantCreate,
    TenantPage,
    TenantSettings,
    TenantUpdate,
)

_SETTINGS_FIELDS = frozenset(f.name for f in msgspec.structs.fields(TenantSettings))
_zone_names: frozenset[str] | None = None
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules", "leapseconds", "leap-seconds"})


async def known_timezones() -> frozenset[str]:
    """IANA zone names, read once from the tz database off the event loop."""
    global _zone_names
    if _zone_names is None:
        # No lock: two first callers at once both read the list, harmlessly.
        names = await asyncio.to_thread(zoneinfo.available_timezones)
        # System tz directories also hold files that are not zones one should pick.
        _zone_names = frozenset(names - _NOT_ZONES)
    return _zone_names


async def validate_timezone(name: str, session: AsyncSession | None = None) -> str:
    """``name`` if it is an IANA zone Python knows (and, given a session, PostgreSQL too:
    rollups convert with ``AT TIME ZONE``); otherwise Invalid."""
    if name not in await known_timezones():
        raise Invalid(f"{name!r} is not an IANA time zone (e.g. Europe/Berlin).", field="timezone")
    if session is not None:
        try:
            await repository.check_timezone(session, name)
        except DBAPIError as exc:
            if is_database_unavailable(exc):
                raise
            raise Invalid(
                f"{name!r} is not a time zone this database knows.", field="timezone"
            ) from exc
    return name


def _settings(raw: dict[str, Any] | None) -> TenantSettings:
    known = {k: v for k, v in (raw or {}).items() if k in _SETTINGS_FIELDS}
    return msgspec.convert(known, TenantSettings)


def _to_schema(row: models.Tenant) -> Tenant:
    return Tenant(
        id=row.id,
        name=row.name,
        timezone=row.timezone,
        settings=_settings(row.settings),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def create_tenant(session: AsyncSession, data: TenantCreate) -> Tenant:
    """Insert a tenant. Conflict if the id is taken; Invalid for a bad timezone."""
    await validate_timezone(data.timezone, session)
    row = await repository.insert_tenant(
        session,
        tenant_id=data.id,
        name=data.name,
        timezone=data.timezone,
        settings=msgspec.to_builtins(data.settings),
    )
    if row is None:
        raise Conflict(f"A tenant {data.id!r} already exists.", extra={"tenant_id": data.id})
    return _to_schema(row)


async def get_tenant(session: AsyncSession, tenant_id: str) -> Tenant:
    """The tenant, or NotFound."""
    row = await repository.get(session, tenant_id)
    if row is None:
        raise NotFound(f"No tenant {tenant_id!r}.")
    return _to_schema(row)


async def list_tenants(
    session: AsyncSession, *, limit: int = 50, cursor: str | None = None
) -> TenantPage:
    """Tenants ordered by id, ``limit`` at a time; pass ``next_cursor`` back for the next page."""
    rows = list(await repository.page(session, limit=limit + 1, after=cursor))
    more = len(rows) > limit
    rows = rows[:limit]
    return TenantPage(
        items=[_to_schema(r) for r in rows], next_cursor=rows[-1].id if more and rows else None
    )


async def update_tenant(session: AsyncSession, tenant_id: str, data: TenantUpdate) -> Tenant:
    """Change the given fields; NotFound if there is no such tenant."""
    values: dict[str, Any] = {}
    if data.name is not msgspec.UNSET:
        values["name"] = data.name
    if data.timezone is not msgspec.UNSET:
        values["timezone"] = await validate_timezone(data.timezone, session)
    if data.settings is not msgspec.UNSET:
        values["settings"] = msgspec.to_builtins(data.settings)
    if not values:
        return await get_tenant(session, tenant_id)
    row = await repository.update_tenant(session, tenant_id, values)
    if row is None:
        raise NotFound(f"No tenant {tenant_id!r}.")
    return _to_schema(row)


async def delete_tenant(session: AsyncSession, tenant_id: str) -> None:
    """Delete the tenant and, through ON DELETE CASCADE, all of its data."""
    if not await repository.delete_tenant(session, tenant_id):
        raise NotFound(f"No tenant {tenant_id!r}.")


async def tenant_exists(session: AsyncSession, tenant_id: str) -> bool:
    return await repository.exists(session, tenant_id)


async def tenant_timezones(session: AsyncSession, tenant_ids: Iterable[str]) -> dict[str, str]:
    """The timezone of each existing tenant among ``tenant_ids``, in one query."""
    ids = sorted(set(tenant_ids))
    if not ids:
        return {}
    return await repository.timezones(session, ids)


async def get_tenant_config(session: AsyncSession, tenant_id: str) -> TenantConfig:
    """Timezone and settings of a tenant (for rollups, stats, digests); NotFound if absent."""
    row = await repository.config_row(session, tenant_id)
    if row is None:
        raise NotFound(f"No tenant {tenant_id!r}.")
    settings = _settings(row.settings)
    return TenantConfig(
        tenant_id=tenant_id,
        timezone=row.timezone,
        conversion_events=tuple(settings.conversion_events or DEFAULT_CONVERSION_EVENTS),
    )
