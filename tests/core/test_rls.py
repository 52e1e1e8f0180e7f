"""Row-level security: the second wall behind every query's tenant filter (migration 0006r).

The app connects as a role that owns no table and is no superuser, so the policies
apply to it; these tests send queries WITHOUT a tenant filter and check what the
policy lets through.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.db import Base, Database, bind_tenant
from app.core.settings import Settings
from app.models import import_all_models
from tests.conftest import APP_URLS

TENANTS = ("acme", "globex")


async def _seed(owner_url: str) -> None:
    """Two tenants with an event, a source and a run each, written as the owner."""
    engine = create_async_engine(owner_url)
    try:
        async with engine.begin() as conn:
            for tenant in TENANTS:
                source_id = uuid.uuid4()
                await conn.execute(
                    text("INSERT INTO tenants (id, name, timezone) VALUES (:t, :t, 'UTC')"),
                    {"t": tenant},
                )
                await conn.execute(
                    text(
                        "INSERT INTO events (tenant_id, event_id, event_name, occurred_at)"
                        " VALUES (:t, 'e1', 'page_view', now())"
                    ),
                    {"t": tenant},
                )
                await conn.execute(
                    text(
                        "INSERT INTO ingestion_sources (id, tenant_id, kind, name)"
                        " VALUES (:id, :t, 'synthetic', 'demo')"
                    ),
                    {"id": source_id, "t": tenant},
                )
                await conn.execute(
                    text(
                        "INSERT INTO ingestion_runs (id, tenant_id, source_id, trigger,"
                        " max_attempts) VALUES (:id, :t, :s, 'manual', 3)"
                    ),
                    {"id": uuid.uuid4(), "t": tenant, "s": source_id},
                )
    finally:
        await engine.dispose()


@pytest.fixture
async def app_db(
    settings: Settings, database_url: str, clean_tables: None
) -> AsyncIterator[Database]:
    """The app's Database (its own role), one pooled connection, over two seeded tenants."""
    assert settings.database_url == APP_URLS[database_url]
    await _seed(database_url)
    one = msgspec.structs.replace(settings, db_pool_size=1, db_max_overflow=0)
    db = Database.from_settings(one, settings.database_url or "")
    try:
        yield db
    finally:
        await db.dispose()


async def _tenants_seen(db: Database, table: str, **context: object) -> list[str]:
    async with db.session(**context) as session:  # type: ignore[arg-type]
        column = "id" if table == "tenants" else "tenant_id"
        rows = await session.execute(text(f"SELECT DISTINCT {column} FROM {table} ORDER BY 1"))
        return [r[0] for r in rows]


@pytest.mark.parametrize("table", ["tenants", "events", "ingestion_sources", "ingestion_runs"])
async def test_query_without_tenant_filter_in_a_tenants_context_returns_only_its_rows(
    app_db: Database, table: str
) -> None:
    assert await _tenants_seen(app_db, table, tenant_id="acme") == ["acme"]
    assert await _tenants_seen(app_db, table, tenant_id="globex") == ["globex"]


@pytest.mark.parametrize("table", ["tenants", "events", "ingestion_sources", "ingestion_runs"])
async def test_unit_of_work_without_context_sees_no_tenants_rows(
    app_db: Database, table: str
) -> None:
    assert await _tenants_seen(app_db, table) == []


async def test_explicit_cross_tenant_unit_of_work_sees_every_tenant(app_db: Database) -> None:
    assert await _tenants_seen(app_db, "events", all_tenants=True) == list(TENANTS)


async def test_writing_another_tenants_row_in_a_tenants_context_fails(app_db: Database) -> None:
    async with app_db.session("acme") as session:
        with pytest.raises(DBAPIError) as raised:
            await session.execute(
                text(
                    "INSERT INTO events (tenant_id, event_id, event_name, occurred_at)"
                    " VALUES ('globex', 'planted', 'page_view', now())"
                )
            )
    assert getattr(raised.value.orig, "sqlstate", None) == "42501"  # insufficient_privilege
    async with app_db.session("acme") as session:
        # Moving one's own row to another tenant is refused the same way.
        with pytest.raises(DBAPIError):
            await session.execute(text("UPDATE ingestion_sources SET tenant_id = 'globex'"))
    async with app_db.session("acme") as session:
        # Another tenant's rows are invisible to UPDATE and DELETE: nothing changes.
        deleted = await session.execute(text("DELETE FROM events WHERE tenant_id = 'globex'"))
        await session.commit()
    assert getattr(deleted, "rowcount", None) == 0
    assert await _tenants_seen(app_db, "events", all_tenants=True) == list(TENANTS)


async def test_a_unit_of_work_is_one_tenants_or_all_tenants_not_both(app_db: Database) -> None:
    with pytest.raises(ValueError, match="not both"):
        app_db.new_session("acme", all_tenants=True)


async def test_bind_tenant_binds_an_autocommit_connection_once_per_tenant(
    app_db: Database,
) -> None:
    sent: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement)

    event.listen(app_db.engine.sync_engine, "before_cursor_execute", record)
    async with app_db.engine.connect() as raw:
        conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
        await bind_tenant(conn, "acme")
        assert [r[0] for r in await conn.execute(text("SELECT tenant_id FROM events"))] == ["acme"]
        binds = len([s for s in sent if "set_config" in s])
        await bind_tenant(conn, "acme")  # already bound: no round trip
        assert len([s for s in sent if "set_config" in s]) == binds
        await bind_tenant(conn, "globex")
        assert len([s for s in sent if "set_config" in s]) == binds + 1
        assert [r[0] for r in await conn.execute(text("SELECT tenant_id FROM events"))] == [
            "globex"
        ]
    # The same pooled connection (pool of one), still bound to globex at session level:
    # a unit of work without context must not inherit that binding.
    assert await _tenants_seen(app_db, "events") == []
    async with app_db.engine.connect() as raw:
        conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
        await bind_tenant(conn, "globex")  # the binding is remembered with the connection
        assert [r[0] for r in await conn.execute(text("SELECT tenant_id FROM events"))] == [
            "globex"
        ]
    assert len([s for s in sent if "set_config" in s and "false" in s]) == 2


async def test_every_tenant_owned_table_has_a_row_level_security_policy(
    database_url: str,
) -> None:
    import_all_models()
    owned = {
        t.name for t in Base.metadata.sorted_tables if "tenant_id" in t.c or t.name == "tenants"
    }
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relrowsecurity"
                    " AND EXISTS (SELECT FROM pg_policies p WHERE p.tablename = c.relname)"
                )
            )
            protected = {r[0] for r in rows}
            role = (
                await conn.execute(
                    text(
                        "SELECT rolsuper, rolbypassrls,"
                        " (SELECT count(*) FROM pg_class WHERE relowner = r.oid)"
                        " FROM pg_roles r WHERE rolname = 'pulse_test_app'"
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    assert len(owned) >= 13
    assert owned - protected == set()
    # The role the app runs as in the tests: the policies apply to it.
    assert tuple(role) == (False, False, 0)


def test_migrations_run_as_the_owner_url_when_one_is_set() -> None:
    from app.core.settings import SettingsError, load_settings

    app_url, owner_url = "postgresql://pulse@db/pulse", "postgresql://pulse_owner@db/pulse"
    same = load_settings({"PULSE_DATABASE_URL": app_url}, dotenv=None)
    assert same.effective_migration_url == app_url
    split = load_settings(
        {"PULSE_DATABASE_URL": app_url, "PULSE_MIGRATION_DATABASE_URL": owner_url}, dotenv=None
    )
    assert split.effective_migration_url == owner_url
    with pytest.raises(SettingsError, match="PULSE_MIGRATION_DATABASE_URL must be a PostgreSQL"):
        load_settings({"PULSE_MIGRATION_DATABASE_URL": "mysql://x/y"}, dotenv=None)
