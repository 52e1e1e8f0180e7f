"""The peer: the summary endpoint written the conventional way, for comparison only.

FastAPI + SQLAlchemy async (asyncpg), one engine with the same pool size as Pulse, a
session per request, one query per request straight over the raw ``events`` table: no
rollups, no cache, no auth (which favours the peer). Run by the benchmark as
``uvicorn bench.peer:app``; never part of the app package.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

engine = create_async_engine(
    os.environ.get("BENCH_PEER_DATABASE_URL", "postgresql+asyncpg://postgres@/postgres"),
    pool_size=10,
    max_overflow=10,
)
Session = async_sessionmaker(engine, expire_on_commit=False)
app = FastAPI(title="peer")

SUMMARY = text(
    """
    SELECT count(*) AS events,
           count(*) FILTER (WHERE event_name = 'page_view') AS pageviews,
           count(*) FILTER (WHERE event_name = 'first_visit') AS new_users,
           count(DISTINCT user_id) AS users,
           count(DISTINCT session_id) AS sessions,
           count(DISTINCT session_id) FILTER (WHERE session_engaged) AS engaged_sessions,
           coalesce(sum(engagement_time_msec), 0) AS engagement_msec,
           coalesce(sum(revenue), 0) AS revenue
    FROM events
    WHERE tenant_id = :tenant_id AND occurred_at >= :start AND occurred_at < :end
    """
)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with Session() as session:
        yield session


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/tenants/{tenant_id}/summary")
async def summary(
    tenant_id: str,
    start: date,
    end: date,
    session: Annotated[AsyncSession, Depends(get_session)],
) -> dict[str, Any]:
    row = (
        await session.execute(
            SUMMARY,
            {
                "tenant_id": tenant_id,
                "start": datetime.combine(start, time(), UTC),
                "end": datetime.combine(end + timedelta(days=1), time(), UTC),
            },
        )
    ).one()
    sessions = row.sessions or 0
    return {
        "events": row.events,
        "pageviews": row.pageviews,
        "new_users": row.new_users,
        "users": row.users,
        "sessions": sessions,
        "bounce_rate": 1 - row.engaged_sessions / sessions if sessions else None,
        "avg_session_duration": row.engagement_msec / 1000 / sessions if sessions else None,
        "views_per_session": row.pageviews / sessions if sessions else None,
        "revenue": float(row.revenue),
    }
