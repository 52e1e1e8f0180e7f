"""The ingestion module's records read through the ORM: a tenant's runs, sources and
quarantined rows, one query per function (the service turns them into API schemas)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.ingestion.models import QuarantinedRow, Run, Source


async def find_run(
    session: AsyncSession, tenant_id: str, run_id: uuid.UUID, *, for_update: bool = False
) -> Run | None:
    query = select(Run).where(Run.tenant_id == tenant_id, Run.id == run_id)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def runs_page(
    session: AsyncSession,
    tenant_id: str,
    *,
    source_id: uuid.UUID | None,
    status: str | None,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[Run]:
    """Up to ``limit`` runs, newest first, created before ``before`` (a page's cursor)."""
    query = select(Run).where(Run.tenant_id == tenant_id)
    if source_id is not None:
        query = query.where(Run.source_id == source_id)
    if status is not None:
        query = query.where(Run.status == status)
    if before is not None:
        query = query.where(tuple_(Run.created_at, Run.id) < before)
    rows = await session.execute(query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit))
    return rows.scalars().all()


async def quarantine_page(
    session: AsyncSession, tenant_id: str, run_id: uuid.UUID, *, after: int | None, limit: int
) -> Sequence[QuarantinedRow]:
    """Up to ``limit`` of a run's quarantined rows in the order they were found."""
    query = select(QuarantinedRow).where(
        QuarantinedRow.tenant_id == tenant_id, QuarantinedRow.run_id == run_id
    )
    if after is not None:
        query = query.where(QuarantinedRow.id > after)
    rows = await session.execute(query.order_by(QuarantinedRow.id).limit(limit))
    return rows.scalars().all()


async def find_source(session: AsyncSession, tenant_id: str, source_id: uuid.UUID) -> Source | None:
    query = select(Source).where(Source.tenant_id == tenant_id, Source.id == source_id)
    return (await session.execute(query)).scalar_one_or_none()


async def tenant_sources(session: AsyncSession, tenant_id: str) -> Sequence[Source]:
    rows = await session.execute(
        select(Source).where(Source.tenant_id == tenant_id).order_by(Source.created_at, Source.id)
    )
    return rows.scalars().all()


async def delete_source(session: AsyncSession, tenant_id: str, source_id: uuid.UUID) -> bool:
    """Whether the source existed (its runs and ledger go with it: foreign keys)."""
    result = await session.execute(
        delete(Source).where(Source.tenant_id == tenant_id, Source.id == source_id)
    )
    return bool(getattr(result, "rowcount", 0))


async def sources_with_secrets_for_update(session: AsyncSession) -> Sequence[Source]:
    """Every source that holds secrets, locked (key rotation, across tenants)."""
    rows = await session.execute(
        select(Source).where(Source.secrets_ciphertext.is_not(None)).with_for_update()
    )
    return rows.scalars().all()
