"""Alembic glue: run migrations and compare the database with the migration head.

Alembic's API is synchronous (our ``env.py`` runs its own event loop), so the
functions here are blocking: call them via ``asyncio.to_thread`` from async code.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.db import async_url

# src/app/core/migrations.py -> project root holds alembic.ini and alembic/.
PROJECT_ROOT = Path(__file__).resolve().parents[3]


def alembic_config(url: str | None = None) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    if url is not None:
        # ConfigParser treats % as interpolation; escape it for passwords that contain one.
        config.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return config


def upgrade_to_head(url: str) -> None:
    """Blocking: migrate the database at ``url`` to the newest revision."""
    command.upgrade(alembic_config(url), "head")


def head_revisions() -> frozenset[str]:
    """Blocking (reads the migration scripts): the revision ids at the head."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


async def current_revisions(conn: AsyncConnection) -> frozenset[str]:
    """The revisions the database is at; empty if it was never migrated."""
    exists = await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    if not exists:
        return frozenset()
    rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
    return frozenset(row[0] for row in rows)
