"""Rows of a run that failed validation, kept with their line and reason."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.pagination import int_cursor, parse_int_cursor
from app.modules.ingestion import repository, schemas
from app.modules.ingestion.service.runs import _get_run


async def list_quarantine(
    session: AsyncSession,
    tenant_id: str,
    run_id: uuid.UUID,
    *,
    limit: int = 100,
    cursor: str | None = None,
) -> schemas.QuarantinePage:
    """A run's quarantined rows in the order they were found (``core.pagination``)."""
    after = parse_int_cursor(cursor) if cursor is not None else None
    await _get_run(session, tenant_id, run_id)
    items = await repository.quarantine_page(
        session, tenant_id, run_id, after=after, limit=limit + 1
    )
    page = items[:limit]
    return schemas.QuarantinePage(
        items=[
            schemas.QuarantinedRow(
                item=q.item,
                line_number=q.line_number,
                reason=q.reason,
                raw=q.raw,
                created_at=q.created_at,
            )
            for q in page
        ],
        next_cursor=int_cursor(page[-1].id) if len(items) > limit and page else None,
    )
