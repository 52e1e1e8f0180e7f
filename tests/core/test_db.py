"""The shared engine: request sessions commit or roll back, COPY joins the caller's
transaction, read sessions run in autocommit within the request timeout and survive a
dropped connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.core.db import Database, async_url, copy_rows, provide_db_session
from app.core.errors import Invalid, exception_handlers
from app.core.settings import Settings


@pytest.fixture
async def db(settings: Settings, database_url: str) -> AsyncIterator[Database]:
    # The owner's URL: this test creates its own table (the app's role may not).
    database = Database.from_settings(settings, database_url)
    async with database.engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS copy_probe"))
        await conn.execute(
            text("CREATE TABLE copy_probe (id int PRIMARY KEY, at timestamptz, doc jsonb)")
        )
    yield database
    async with database.engine.begin() as conn:
        await conn.execute(text("DROP TABLE copy_probe"))
    await database.dispose()


async def _count(db: Database) -> int:
    async with db.session(all_tenants=True) as session:
        return int(await session.scalar(text("SELECT count(*) FROM copy_probe")) or 0)


async def test_copy_rows_keep_jsonb_values_and_commit_with_the_session(db: Database) -> None:
    doc = {"a": [1, "x", None], "nested": {"ü": True}}
    at = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    async with db.session(all_tenants=True) as session:
        copied = await copy_rows(
            session,
            "copy_probe",
            ["id", "at", "doc"],
            [(1, at, msgspec.json.encode(doc).decode()), (2, at, "{}")],
        )
        await session.commit()
    assert copied == 2
    async with db.session(all_tenants=True) as session:
        row = (await session.execute(text("SELECT at, doc FROM copy_probe WHERE id = 1"))).one()
    assert row.at == at
    assert row.doc == doc


async def test_copy_rows_roll_back_with_the_transaction(db: Database) -> None:
    async with db.session(all_tenants=True) as session:
        await copy_rows(session, "copy_probe", ["id"], [(10,), (11,)])
        assert await session.scalar(text("SELECT count(*) FROM copy_probe")) == 2
        await session.rollback()
    assert await _count(db) == 0


def _probe_app(db: Database) -> Litestar:
    @post("/probe/{outcome:str}")
    async def probe(
        outcome: FromPath[str], db_session: NamedDependency[AsyncSession]
    ) -> dict[str, str]:
        if outcome == "slow":
            await db_session.execute(text("SELECT pg_sleep(30)"))
        await db_session.execute(text("INSERT INTO copy_probe (id) VALUES (42)"))
        if outcome == "invalid":
            raise Invalid("nope", field="outcome")
        if outcome == "crash":
            raise RuntimeError("password=hunter2 SELECT secret FROM vault")
        return {"outcome": outcome}

    app = Litestar(
        [probe],
        dependencies={"db_session": Provide(provide_db_session)},
        exception_handlers=exception_handlers,
        logging_config=None,
    )
    app.state.db = db
    return app


async def _post(app: Litestar, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return await http.post(path)


async def test_request_session_commits_when_the_handler_succeeds(db: Database) -> None:
    response = await _post(_probe_app(db), "/probe/ok")
    assert response.status_code == 201
    assert await _count(db) == 1


async def test_request_session_rolls_back_on_domain_error(db: Database) -> None:
    response = await _post(_probe_app(db), "/probe/invalid")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["field"] == "outcome"
    assert await _count(db) == 0


async def test_unexpected_error_is_500_without_leaking_details(db: Database) -> None:
    response = await _post(_probe_app(db), "/probe/crash")
    assert response.status_code == 500
    body = response.text
    assert "hunter2" not in body
    assert "SELECT" not in body
    assert "Traceback" not in body
    assert response.json()["title"] == "Internal Server Error"
    assert await _count(db) == 0


async def _driver_commands(db: Database) -> list[str]:
    """Install a query logger on every connection checked out from now on; return the
    list it fills (simple-protocol commands: BEGIN, COMMIT, ROLLBACK, pings)."""
    from sqlalchemy import event

    seen: list[str] = []

    def on_checkout(dbapi_connection: Any, *_: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda r: seen.append(r.query))

    event.listen(db.engine.sync_engine, "checkout", on_checkout)
    return seen


async def test_read_session_sends_no_transaction_ceremony_and_binds_the_tenant(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.core.db as db_module

    bound: list[str] = []

    async def bind_tenant(conn: Any, tenant_id: str) -> None:
        bound.append(tenant_id)

    monkeypatch.setattr(db_module, "bind_tenant", bind_tenant)
    commands = await _driver_commands(db)
    value = await db.run_read("acme", lambda s: s.scalar(text("SELECT count(*) FROM copy_probe")))
    for _ in range(3):  # query loggers run with call_soon
        await asyncio.sleep(0)
    assert value == 0
    assert bound == ["acme"]
    assert commands == []
    # Autocommit: what a read session writes is not held in a transaction.
    await db.run_read("acme", lambda s: s.execute(text("INSERT INTO copy_probe (id) VALUES (7)")))
    assert await _count(db) == 1


async def test_a_read_on_a_connection_the_server_dropped_is_retried_once(
    db: Database, database_url: str
) -> None:
    async with db.engine.connect() as conn:
        pid = await conn.scalar(text("SELECT pg_backend_pid()"))
    # The pooled connection is killed behind the pool's back (as a database restart does).
    admin = create_async_engine(async_url(database_url))  # the owner may terminate it
    try:
        async with admin.connect() as other:
            killed = await other.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    finally:
        await admin.dispose()
    assert killed is True
    value = await db.run_read(
        "acme", lambda s: s.scalar(text("SELECT pg_backend_pid() <> :p"), {"p": pid})
    )
    assert value is True


async def test_a_read_that_outlasts_the_request_timeout_is_a_timeout_error(
    settings: Settings,
) -> None:
    database = Database.from_settings(
        msgspec.structs.replace(settings, db_request_timeout_s=0.3), settings.database_url or ""
    )
    try:
        with pytest.raises(TimeoutError):
            await database.run_read("acme", lambda s: s.execute(text("SELECT pg_sleep(30)")))
        # The connection was discarded, not pooled mid-statement: the next read works.
        assert await database.run_read("acme", lambda s: s.scalar(text("SELECT 1"))) == 1
    finally:
        await database.dispose()


async def test_a_request_sessions_statement_past_the_request_timeout_is_503(
    settings: Settings, database_url: str
) -> None:
    # The owner's URL: this test creates its own table (the app's role may not).
    database = Database.from_settings(
        msgspec.structs.replace(settings, db_request_timeout_s=0.5), database_url
    )
    async with database.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS copy_probe (id int PRIMARY KEY)"))
        await conn.execute(text("DELETE FROM copy_probe"))
    try:
        app = _probe_app(database)
        # The server would let it run 15 s (statement_timeout); the request bound cuts it.
        slow = await _post(app, "/probe/slow")
        assert slow.status_code == 503
        assert slow.headers["content-type"] == "application/problem+json"
        assert slow.headers["retry-after"]
        assert await _count(database) == 0
        ok = await _post(app, "/probe/ok")
        assert ok.status_code == 201
        assert await _count(database) == 1
    finally:
        async with database.engine.begin() as conn:
            await conn.execute(text("DELETE FROM copy_probe"))
        await database.dispose()
