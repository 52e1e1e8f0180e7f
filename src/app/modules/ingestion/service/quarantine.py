"""Rows of a run that failed validation, kept with their line and reason."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.ingestion import schemas
from app.modules.ingestion.models import QuarantinedRow
from app.modules.ingestion.service.runs import _get_run


async def list_quarantine(
    session: AsyncSession, tenant_id: str, run_id: uuid.UUID, *, limit: int = 100, offset: int = 0
) -> schemas.QuarantinePage:
    await _get_run(session, tenant_id, run_id)
    rows = await session.execute(
        select(QuarantinedRow)
        .where(QuarantinedRow.tenant_id == tenant_id, QuarantinedRow.run_id == run_id)
        .order_by(QuarantinedRow.id)
        .limit(limit + 1)
        .offset(offset)
    )
    items = list(rows.scalars())
    more = len(items) > limit
    return schemas.QuarantinePage(
        items=[
            schemas.QuarantinedRow(
                item=q.item,
                line_number=q.line_number,
                reason=q.reason,
                raw=q.raw,
                created_at=q.created_at,
            )
            for q in items[:limit]
        ],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if more else None,
    )
