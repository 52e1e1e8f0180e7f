"""The stats hot path: a cached answer touches no database, an uncached one sends only
the query engine's statements (no transaction, no ping, no settings or version lookup),
and cached facts follow every change through PostgreSQL NOTIFY, on every instance."""

from __future__ import annotations

import asyncio
import contextvars
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from app.main import create_app
from app.modules.dashboard import runtime as runtime_module
from app.modules.tenants import TenantSettings, TenantUpdate, update_tenant
from tests.conftest import make_settings, serve_in_process
from tests.fixtures.events import EventLoader, Sessions, TenantMaker, make_event
from tests.fixtures.notify import settle, wait_until

BASE = "/api/v1/tenants/acme/stats"
SUMMARY = f"{BASE}/summary?date_range=2026-03-01,2026-03-31"
BREAKDOWN = f"{BASE}/breakdown?dimension=page_path&date_range=2026-03-01,2026-03-31"
FACT_TABLES = ("tenants", "tenant_data_versions", "stats_rollup_state")

IN_REQUEST: contextvars.ContextVar[bool] = contextvars.ContextVar("in_request", default=False)
IN_ENGINE: contextvars.ContextVar[bool] = contextvars.ContextVar("in_engine", default=False)


@dataclass
class Recorded:
    """What one request sent: SQL through SQLAlchemy (tagged when the query engine sent
    it), simple-protocol commands sent by the driver itself (BEGIN, COMMIT, ROLLBACK, the
    pre-ping), and pool checkouts."""

    statements: list[tuple[bool, str]] = field(default_factory=list)
    driver_commands: list[str] = field(default_factory=list)
    checkouts: int = 0

    def ceremony(self) -> list[str]:
        """Transaction statements and pings (asyncpg's own type introspection, once per
        connection and type, is neither)."""
        return [
            command
            for command in self.driver_commands
            if command.strip().rstrip(";").upper() in {"", "SELECT 1"}
            or command.strip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "START"))
        ]

    def outside_engine(self) -> list[str]:
        """Statements outside the query engine, other than tenant bindings."""
        return [sql for tagged, sql in self.statements if not tagged and not _is_binding(sql)]

    def bindings(self) -> list[str]:
        """Row-level-security bindings (``bind_tenant``): sent only when a connection
        last served another tenant (or is new)."""
        return [sql for _, sql in self.statements if _is_binding(sql)]

    def by_engine(self) -> list[str]:
        return [sql for tagged, sql in self.statements if tagged]


def _is_binding(sql: str) -> bool:
    return sql.startswith("SELECT set_config('pulse.tenant_id'")


@contextmanager
def recording(app: Litestar, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    engine = app.state.db.engine.sync_engine
    rec = Recorded()
    instrumented: weakref.WeakSet[Any] = weakref.WeakSet()

    def on_driver_command(record: Any) -> None:
        if IN_REQUEST.get():
            rec.driver_commands.append(record.query)

    def before_cursor_execute(*args: Any) -> None:
        if IN_REQUEST.get():
            rec.statements.append((IN_ENGINE.get(), args[2]))

    def on_checkout(dbapi_connection: Any, *_: Any) -> None:
        driver = dbapi_connection.driver_connection
        if driver not in instrumented:
            driver.add_query_logger(on_driver_command)
            instrumented.add(driver)
        if IN_REQUEST.get():
            rec.checkouts += 1

    engine_entry = runtime_module.run_normal_query

    async def tagged(*args: Any, **kwargs: Any) -> Any:
        token = IN_ENGINE.set(True)
        try:
            return await engine_entry(*args, **kwargs)
        finally:
            IN_ENGINE.reset(token)

    monkeypatch.setattr(runtime_module, "run_normal_query", tagged)
    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    event.listen(engine, "checkout", on_checkout)
    try:
        yield rec
    finally:
        event.remove(engine, "before_cursor_execute", before_cursor_execute)
        event.remove(engine, "checkout", on_checkout)


async def request(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    """One request, marked so that only its own database traffic is recorded (the
    app's background tasks run in other contexts)."""
    token = IN_REQUEST.set(True)
    try:
        response = await http.get(url, headers=headers)
    finally:
        IN_REQUEST.reset(token)
    for _ in range(3):  # asyncpg calls query loggers with call_soon
        await asyncio.sleep(0)
    return response


async def _seed(make_tenant: TenantMaker, load: EventLoader) -> None:
    await make_tenant("acme", timezone="UTC", conversions=["purchase"])
    await load(
        "acme",
        [
            make_event("2026-03-10T09:00:00Z", user_id="u1", session_id="s1", page_path="/"),
            make_event("2026-03-10T23:30:00Z", "purchase", user_id="u2", session_id="s2"),
            make_event("2026-03-12T10:00:00Z", user_id="u3", session_id="s3", page_path="/a"),
        ],
    )


@pytest.fixture
def viewer(auth_headers: Any) -> dict[str, str]:
    headers: dict[str, str] = auth_headers("acme", "viewer")
    return headers


async def test_cached_answer_takes_no_connection_and_sends_nothing(
    app: Litestar,
    client: httpx.AsyncClient,
    make_tenant: TenantMaker,
    load: EventLoader,
    db_sessions: Sessions,
    viewer: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _seed(make_tenant, load)
    await settle(app, db_sessions)
    first = await client.get(SUMMARY, headers=viewer)
    assert first.status_code == 200
    assert first.json()["meta"]["cached"] is False
    with recording(app, monkeypatch) as rec:
        hit = await request(client, SUMMARY, headers=viewer)
    assert hit.status_code == 200
    assert hit.headers["x-cache"] == "hit"
    assert hit.json()["meta"]["cached"] is True
    assert hit.json()["totals"] == first.json()["totals"]
    assert rec.checkouts == 0
    assert rec.statements == []
    assert rec.driver_commands == []


async def test_uncached_answer_sends_only_the_query_engines_statements(
    app: Litestar,
    client: httpx.AsyncClient,
    make_tenant: TenantMaker,
    load: EventLoader,
    db_sessions: Sessions,
    viewer: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _seed(make_tenant, load)
    await settle(app, db_sessions)
    with recording(app, monkeypatch) as rec:
        # The tenant's first request reads its facts: two statements, no transaction.
        cold = await request(client, SUMMARY, headers=viewer)
        assert cold.status_code == 200
        facts_reads = rec.outside_engine()
        assert len(facts_reads) == 2
        assert any("FROM tenants" in sql for sql in facts_reads)
        assert any("tenant_data_versions" in sql for sql in facts_reads)
        assert rec.ceremony() == []
        # New connections: each is bound to the tenant once, at most once per checkout.
        assert 1 <= len(rec.bindings()) <= rec.checkouts
        rec.statements.clear()
        rec.checkouts = 0

        # Facts are known now: a new query is only the engine's work, on one connection.
        miss = await request(client, BREAKDOWN, headers=viewer)
    assert miss.status_code == 200
    assert miss.headers["x-cache"] == "miss"
    assert miss.json()["meta"]["cached"] is False
    assert {r["dimensions"]["page_path"] for r in miss.json()["rows"]} == {"/", "/a", "(not set)"}
    assert rec.checkouts == 1
    assert rec.ceremony() == []  # no BEGIN, COMMIT, ROLLBACK or pre-ping
    assert rec.outside_engine() == []  # statements = the query engine's + 0
    # The pool hands out the most recently used connection, already bound to this tenant.
    assert rec.bindings() == []
    engine_statements = rec.by_engine()
    assert engine_statements
    assert not [sql for sql in engine_statements if any(t in sql for t in FACT_TABLES)]


async def test_a_second_instance_follows_timezone_conversion_and_import_changes(
    app: Litestar,
    client: httpx.AsyncClient,
    settings: Any,
    make_tenant: TenantMaker,
    load: EventLoader,
    db_sessions: Sessions,
    viewer: dict[str, str],
    auth_headers: Any,
) -> None:
    await _seed(make_tenant, load)
    other = create_app(settings)
    async with serve_in_process(other) as second:
        await settle(other, db_sessions)
        facts = other.state.stats.facts
        first = await second.get(SUMMARY, headers=viewer)
        assert first.json()["meta"]["timezone"] == "UTC"
        assert (await second.get(SUMMARY, headers=viewer)).headers["x-cache"] == "hit"

        # 1. The timezone changes through the FIRST instance's admin API.
        changed = await client.patch(
            "/api/v1/tenants/acme",
            json={"timezone": "Europe/Berlin"},
            headers=auth_headers(None, "operator"),
        )
        assert changed.status_code == 200, changed.text
        await wait_until(lambda: facts.get("acme") is None)
        moved = await second.get(SUMMARY, headers=viewer)
        assert moved.headers["x-cache"] == "miss"
        assert moved.json()["meta"]["timezone"] == "Europe/Berlin"
        assert (await second.get(SUMMARY, headers=viewer)).headers["x-cache"] == "hit"

        # 2. The conversion events change through a third writer (plain SQL session).
        async with db_sessions() as session:
            await update_tenant(
                session,
                "acme",
                TenantUpdate(settings=TenantSettings(conversion_events=["page_view"])),
            )
            await session.commit()
        await wait_until(lambda: facts.get("acme") is None)
        converted = await second.get(SUMMARY, headers=viewer)
        assert converted.headers["x-cache"] == "miss"
        assert converted.json()["totals"]["conversions"] == 2

        # 3. An import bumps the data version.
        version = converted.json()["meta"]["data_version"]
        await load("acme", [make_event("2026-03-15T12:00:00Z", user_id="u9", session_id="s9")])
        await wait_until(lambda: facts.get("acme") is None)
        imported = await second.get(SUMMARY, headers=viewer)
        assert imported.headers["x-cache"] == "miss"
        assert imported.json()["meta"]["data_version"] > version
        assert imported.json()["totals"]["events"] == converted.json()["totals"]["events"] + 1


@pytest.fixture
async def app_role(database_url: str, db_sessions: Sessions) -> AsyncIterator[tuple[str, str]]:
    """A login role of its own for an app, so its connections can be counted and capped."""
    role = f"pulse_app_{int(time.time() * 1000) % 10**8}"
    async with db_sessions() as session:
        await session.execute(text(f"CREATE ROLE {role} LOGIN"))
        await session.execute(text(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"))
        await session.execute(text(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}"))
        await session.commit()
    url = make_url(database_url).set(username=role).render_as_string(hide_password=False)
    try:
        yield role, url
    finally:
        async with db_sessions() as session:
            await session.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                {"r": role},
            )
            await session.execute(text(f"DROP OWNED BY {role}"))
            await session.execute(text(f"DROP ROLE {role}"))
            await session.commit()


async def test_a_lost_listener_falls_back_to_a_short_ttl_and_resubscribes(
    app_role: tuple[str, str],
    make_tenant: TenantMaker,
    load: EventLoader,
    db_sessions: Sessions,
    viewer: dict[str, str],
) -> None:
    role, url = app_role
    await _seed(make_tenant, load)
    app = create_app(make_settings(url, stats_facts_fallback_ttl_s=0.2))
    async with serve_in_process(app) as http:
        listener = app.state.notify
        facts = app.state.stats.facts
        await settle(app, db_sessions)
        assert (await http.get(SUMMARY, headers=viewer)).json()["meta"]["timezone"] == "UTC"

        async def sql(statement: str, **params: Any) -> Any:
            async with db_sessions() as session:
                result = await session.execute(text(statement), params)
                value = result.scalar() if result.returns_rows else None
                await session.commit()
                return value

        snapshot = facts.get("acme")
        assert snapshot is not None

        # The database refuses the app's role new connections and drops the ones it has
        # (a real "too many connections for role"): the listener cannot come back.
        await sql(f"ALTER ROLE {role} CONNECTION LIMIT 0")
        await sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = :r",
            r=role,
        )
        await wait_until(lambda: listener.losses == 1 and not listener.live)

        # Nothing can be notified now: cached facts are trusted only for the fallback TTL.
        await wait_until(lambda: facts.get("acme") is None)
        facts.put("ghost", snapshot, facts.stamp())  # cached while the listener was down
        down = await http.get(SUMMARY, headers=viewer)
        assert down.status_code == 503
        assert down.headers["retry-after"]
        assert listener.subscriptions == 1

        # Connections allowed again: it resubscribes and drops everything it cached.
        await sql(f"ALTER ROLE {role} CONNECTION LIMIT -1")
        await wait_until(lambda: listener.subscriptions == 2 and listener.live, timeout_s=30)
        assert facts.get("ghost") is None
        back = await http.get(SUMMARY, headers=viewer)
        assert back.status_code == 200, back.text
        assert facts.get("acme") is not None

        # Notifications flow again.
        async with db_sessions() as session:
            await update_tenant(session, "acme", TenantUpdate(timezone="UTC"))
            await session.commit()
        await wait_until(lambda: facts.get("acme") is None)
        assert (await http.get(SUMMARY, headers=viewer)).json()["meta"]["timezone"] == "UTC"
