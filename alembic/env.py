"""Async Alembic environment: migrations run over asyncpg like the app itself."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.db import Base, async_url
from app.models import import_all_models

import_all_models()
target_metadata = Base.metadata
config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("PULSE_DATABASE_URL")
    if not url:
        raise SystemExit("no database URL: run `python -m app migrate` or set PULSE_DATABASE_URL")
    return async_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            # Serialise concurrent migrators (several replicas starting at once).
            await connection.exec_driver_sql("SELECT pg_advisory_lock(7201002)")
            try:
                await connection.run_sync(_run)
                await connection.commit()
            finally:
                await connection.exec_driver_sql("SELECT pg_advisory_unlock(7201002)")
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    # Read every migration script now, before our event loop runs: file I/O inside a
    # running loop would block it (and blockbuster rightly says so in the tests).
    _ = context.script.revision_map.heads
    asyncio.run(run_migrations_online())
