"""Fixtures of the core tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.core.migrations import upgrade_to_head
from tests.fixtures.postgres import EmbeddedPostgres, temp_pg_dir


@pytest.fixture
async def own_postgres() -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """A migrated PostgreSQL of the test's own, for tests that stop or freeze the server
    (doing that to the suite's shared one would stall every other test)."""
    pg = EmbeddedPostgres(await asyncio.to_thread(temp_pg_dir, "pulse-own-pg-"))
    url = await asyncio.to_thread(pg.start)
    await asyncio.to_thread(upgrade_to_head, url)
    try:
        yield pg, url
    finally:
        await asyncio.to_thread(pg.cleanup)
