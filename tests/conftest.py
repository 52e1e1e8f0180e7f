"""Shared fixtures: a real migrated PostgreSQL, settings, the app and its test client."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from litestar import Litestar

from app.core.logging import configure_logging
from app.core.migrations import upgrade_to_head
from app.core.settings import Settings
from app.main import create_app
from app.modules import installed as installed_modules
from tests.fixtures.postgres import (
    TestDatabases,
    app_login_url,
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


# The superuser URL of a test's database -> the same database as the app's role.
APP_URLS: dict[str, str] = {}


@pytest.fixture(scope="session")
async def test_databases(postgres_admin_url: str) -> AsyncIterator[TestDatabases]:
    """The session's template, its schema built once by the Alembic migrations, and the
    per-test copies made from it (see :class:`tests.fixtures.postgres.TestDatabases`)."""
    template = session_database_name()
    await create_database(postgres_admin_url, template)
    template_url = with_database(postgres_admin_url, template)
    await asyncio.to_thread(upgrade_to_head, template_url)
    await create_app_login_role(template_url)
    databases = TestDatabases(
        postgres_admin_url, template, embedded=not os.environ.get("PULSE_TEST_DATABASE_URL")
    )
    await databases.seal_template()
    _SESSION_DATABASES.append(databases)
    yield databases
    await databases.close()


_SESSION_DATABASES: list[TestDatabases] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for databases in _SESSION_DATABASES:
        terminalreporter.write_line(
            f"test databases: {databases.created} copied from the template, "
            f"{databases.dropped} dropped, tests waited {databases.waited_s:.1f} s for theirs"
        )


@pytest.fixture
async def database_url(
    postgres_admin_url: str, test_databases: TestDatabases
) -> AsyncIterator[str]:
    """A database of this test's own, its schema built by the Alembic migrations.

    No other test sees its rows, and it is dropped after the test. This URL is the
    owner's (a superuser: row-level security does not apply), for fixtures that insert
    or inspect rows directly. The app itself connects as :func:`app_database_url`'s
    role: :func:`make_settings` swaps the URL.
    """
    name = await test_databases.take()
    url = with_database(postgres_admin_url, name)
    APP_URLS[url] = app_login_url(url)
    try:
        yield url
    finally:
        APP_URLS.pop(url, None)
        test_databases.release(name)


@pytest.fixture
def app_database_url(database_url: str) -> str:
    """The test's database as the app's login role: no superuser, no BYPASSRLS."""
    return APP_URLS[database_url]


@pytest.fixture(scope="session", autouse=True)
def blockbuster(postgres_admin_url: str, test_databases: TestDatabases) -> Iterator[BlockBuster]:
    """A blocking call on the event loop fails the test that made it."""
    # Route every log line through the app's handler (rendered off the loop) from the start.
    configure_logging(make_settings(postgres_admin_url))
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
def clean_tables(database_url: str) -> None:
    """Kept for the tests that ask for it: every test that asks for ``database_url`` now
    has a database of its own (see :func:`database_url`), so there is nothing to empty."""


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
