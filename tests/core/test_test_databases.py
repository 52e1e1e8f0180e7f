"""The suite's isolation: every test gets a database of its own, copied from a migrated
template, and a finished test's database goes away even with connections still open."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from app.core.migrations import head_revisions
from tests.fixtures.notify import wait_until
from tests.fixtures.postgres import APP_LOGIN_ROLE, TestDatabases, _asyncpg_dsn, with_database


async def _fetch(url: str, query: str) -> object:
    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def _database_exists(admin_url: str, name: str) -> bool:
    found = await _fetch(admin_url, f"SELECT count(*) FROM pg_database WHERE datname = '{name}'")
    return found == 1


async def test_each_copy_has_the_migrated_schema_and_sees_no_other_copys_rows(
    postgres_admin_url: str, test_databases: TestDatabases
) -> None:
    first, second = await test_databases.take(), await test_databases.take()
    try:
        assert first != second
        first_url = with_database(postgres_admin_url, first)
        second_url = with_database(postgres_admin_url, second)
        heads = await _fetch(first_url, "SELECT string_agg(version_num, ',') FROM alembic_version")
        assert set(str(heads).split(",")) == await asyncio.to_thread(head_revisions)
        await _fetch(
            first_url,
            "INSERT INTO tenants (id, name, timezone) VALUES ('iso-a', 'A', 'UTC') RETURNING 1",
        )
        assert await _fetch(first_url, "SELECT count(*) FROM tenants") == 1
        assert await _fetch(second_url, "SELECT count(*) FROM tenants") == 0
    finally:
        test_databases.release(first)
        test_databases.release(second)


async def test_a_released_database_is_dropped_even_while_a_client_is_still_connected(
    postgres_admin_url: str, test_databases: TestDatabases
) -> None:
    name = await test_databases.take()
    lingering = await asyncpg.connect(_asyncpg_dsn(with_database(postgres_admin_url, name)))
    try:
        test_databases.release(name)

        async def gone() -> bool:
            return not await _database_exists(postgres_admin_url, name)

        await wait_until(gone)
        assert lingering.is_closed() or not await _is_alive(lingering)
    finally:
        lingering.terminate()


async def _is_alive(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    return True


async def test_the_template_accepts_no_connections(
    postgres_admin_url: str, test_databases: TestDatabases
) -> None:
    # A session connected to the template would make every copy fail.
    with pytest.raises(asyncpg.PostgresError, match="not currently accepting connections"):
        await _fetch(with_database(postgres_admin_url, test_databases.template), "SELECT 1")


def test_the_app_connects_to_the_tests_own_database_as_the_app_role(
    database_url: str, app_database_url: str, test_databases: TestDatabases
) -> None:
    owner, app = make_url(database_url), make_url(app_database_url)
    assert app.database == owner.database
    assert owner.database != test_databases.template
    assert app.username == APP_LOGIN_ROLE
