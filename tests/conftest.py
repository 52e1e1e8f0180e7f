"""Shared fixtures: a real migrated PostgreSQL, settings, the app and its test client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.db import Base
from app.core.logging import configure_logging
from app.core.migrations import upgrade_to_head
from app.core.settings import Settings
from app.main import create_app
from app.models import import_all_models
from app.modules import installed as installed_modules
from tests.fixtures.postgres import (
    create_app_login_role,
    create_database,
    embedded_or_configured,
    session_database_name,
    with_database,
)

# Import every module now, at collection: a module may read its files at import time
# (templates, static assets), which is fine at start-up but not inside a running loop.
installed_modules()

pytest_plugins = [
    "tests.fixtures.oidc",
    "tests.fixtures.bigquery",
    "tests.fixtures.sftp",
    "tests.fixtures.events",
    "tests.fixtures.ingestion",
    "tests.fixtures.browser",
]


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    yield from (url for url, _ in embedded_or_configured())


# The superuser URL of the session's database -> the same database as the app's role.
APP_URLS: dict[str, str] = {}


@pytest.fixture(scope="session")
async def database_url(postgres_admin_url: str) -> str:
    """A fresh database for this session, its schema built by the Alembic migrations.

    This URL is the owner's (a superuser: row-level security does not apply), for
    fixtures that insert or inspect rows directly. The app itself connects as
    :func:`app_database_url`'s role: :func:`make_settings` swaps the URL.
    """
    name = session_database_name()
    await create_database(postgres_admin_url, name)
    url = with_database(postgres_admin_url, name)
    await asyncio.to_thread(upgrade_to_head, url)
    APP_URLS[url] = await create_app_login_role(url)
    return url


@pytest.fixture(scope="session")
def app_database_url(database_url: str) -> str:
    """The session's database as the app's login role: no superuser, no BYPASSRLS."""
    return APP_URLS[database_url]


@pytest.fixture(scope="session", autouse=True)
def blockbuster(database_url: str) -> Iterator[BlockBuster]:
    """A blocking call on the event loop fails the test that made it."""
    # Route every log line through the app's handler (rendered off the loop) from the start.
    configure_logging(make_settings(database_url))
    with blockbuster_ctx() as bb:
        # asyncpg stats ~/.pgpass once per new connection when the URL has no password:
        # a microsecond, on connect only, inside the driver.
        for name in ("os.stat", "os.path.exists"):
            if name in bb.functions:
                bb.functions[name].can_block_in(
                    "asyncpg/connect_utils.py", "_parse_connect_dsn_and_args"
                )
        yield bb


def make_settings(database_url: str, **overrides: object) -> Settings:
    from tests.fixtures.oidc import AUDIENCE, AUTH_SETTINGS, default_issuer

    values: dict[str, object] = {
        "env": "test",
        # The app connects as a role row-level security applies to, like in production.
        "database_url": APP_URLS.get(database_url, database_url),
        "log_level": "WARNING",
        "secret_key": "test-secret-key-not-for-production",
        "db_pool_size": 5,
        "db_max_overflow": 5,
        # Auth: the loopback test issuer (tests/fixtures/oidc.py); use token_for/auth_headers.
        "oidc_issuer": default_issuer().issuer,
        "oidc_audience": AUDIENCE,
        **AUTH_SETTINGS,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def clean_tables(database_url: str) -> AsyncIterator[None]:
    """Tests share one database; every tenant-owned table is emptied after each test."""
    yield
    import_all_models()
    tables = [t.name for t in Base.metadata.sorted_tables]
    if not tables:
        return
    engine = create_async_engine(database_url)
    try:
        # A background task of the finished test's app (a sender, a runner) may still be
        # committing its last transaction: TRUNCATE's locks can then deadlock with it once.
        for attempt in range(5):
            try:
                async with engine.begin() as conn:
                    await conn.execute(text("SET LOCAL lock_timeout = '10s'"))
                    await conn.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
                break
            except DBAPIError as exc:
                if attempt == 4 or getattr(exc.orig, "sqlstate", None) not in {"40P01", "55P03"}:
                    raise
    finally:
        await engine.dispose()


@pytest.fixture
def app(settings: Settings, clean_tables: None) -> Litestar:
    return create_app(settings)


@asynccontextmanager
async def serve_in_process(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and talk to it over ASGI, all on the test's own event loop.

    Litestar's AsyncTestClient runs the app in a blocking portal on a second thread and
    loop, which would block this loop on every request (blockbuster rejects that) and
    put the engine on a different loop from the test's own database calls.
    """
    started, stop = asyncio.Event(), asyncio.Event()

    async def run_lifespan() -> None:
        # The lifespan's task group must be entered and exited by one task; pytest runs
        # fixture set-up and tear-down in different tasks, so a dedicated task holds it.
        async with app.lifespan():
            started.set()
            await stop.wait()

    lifespan = asyncio.create_task(run_lifespan(), name="test-app-lifespan")
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({lifespan, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if lifespan.done():
        waiter.cancel()
        lifespan.result()  # start-up failed: raise its error here
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pulse.test") as http:
            yield http
    finally:
        stop.set()
        await lifespan


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_in_process(app) as http:
        yield http
