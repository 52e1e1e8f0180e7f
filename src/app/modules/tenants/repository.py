"""The tenants module's SQL. The session is passed in; nothing commits here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.tenants import models


async def check_timezone(session: AsyncSession, name: str) -> None:
    """Raise the database's error when PostgreSQL does not know the zone ``name`` (the
    rollups convert with ``AT TIME ZONE``); a savepoint keeps the transaction usable."""
    async with session.begin_nested():
        await session.execute(text("SELECT now() AT TIME ZONE :tz"), {"tz": name})


async def insert_tenant(
    session: AsyncSession, *, tenant_id: str, name: str, timezone: str, settings: Any
) -> models.Tenant | None:
    """The new row, or None when the id is taken."""
    statement = (
        insert(models.Tenant)
        .values(id=tenant_id, name=name, timezone=timezone, settings=settings)
        .on_conflict_do_nothing(index_elements=[models.Tenant.id])
        .returning(models.Tenant)
    )
    row: models.Tenant | None = (await session.execute(statement)).scalar_one_or_none()
    return row


async def get(session: AsyncSession, tenant_id: str) -> models.Tenant | None:
    return await session.get(models.Tenant, tenant_id)


async def page(session: AsyncSession, *, limit: int, after: str | None) -> Sequence[models.Tenant]:
    """Up to ``limit`` tenants ordered by id, after the id ``after``."""
    statement = select(models.Tenant).order_by(models.Tenant.id).limit(limit)
    if after is not None:
        statement = statement.where(models.Tenant.id > after)
    return list((await session.execute(statement)).scalars())


async def update_tenant(
    session: AsyncSession, tenant_id: str, values: dict[str, Any]
) -> models.Tenant | None:
    """The changed row, or None when there is no such tenant."""
    statement = (
        update(models.Tenant)
        .where(models.Tenant.id == tenant_id)
        .values(**values, updated_at=func.now())
        .returning(models.Tenant)
        .execution_options(synchronize_session=False)
    )
    row: models.Tenant | None = (await session.execute(statement)).scalar_one_or_none()
    return row


async def delete_tenant(session: AsyncSession, tenant_id: str) -> bool:
    """Whether a row was deleted (its data goes with it: ON DELETE CASCADE)."""
    statement = delete(models.Tenant).where(models.Tenant.id == tenant_id)
    result = await session.execute(statement.returning(models.Tenant.id))
    return result.scalar_one_or_none() is not None


async def exists(session: AsyncSession, tenant_id: str) -> bool:
    statement = select(models.Tenant.id).where(models.Tenant.id == tenant_id)
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def timezones(session: AsyncSession, tenant_ids: Sequence[str]) -> dict[str, str]:
    statement = select(models.Tenant.id, models.Tenant.timezone).where(
        models.Tenant.id.in_(tenant_ids)
    )
    return {row.id: row.timezone for row in await session.execute(statement)}


async def config_row(session: AsyncSession, tenant_id: str) -> Row[Any] | None:
    """The tenant's ``timezone`` and ``settings``, or None."""
    statement = select(models.Tenant.timezone, models.Tenant.settings).where(
        models.Tenant.id == tenant_id
    )
    return (await session.execute(statement)).one_or_none()
