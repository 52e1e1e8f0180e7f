"""The one database engine, sessions for requests and jobs, and a COPY helper.

Pulse has exactly one :class:`Database` per process: one SQLAlchemy
``AsyncEngine`` (asyncpg) and its pool, created in the lifespan and disposed at
shutdown. Request handlers receive an ``AsyncSession`` through dependency
injection that commits on success and rolls back on error, each of its statements
bounded by the request timeout (a frozen server must not hold a request for the
bulk loads' long client-side timeout); background work opens
``async with db.session(tenant_id=...)`` per unit of work and commits explicitly. Read-only
request work (the stats routes) goes through :meth:`Database.run_read`: one pooled
connection in autocommit (no BEGIN/COMMIT), bounded by the request timeout, retried
once on a fresh connection when the first one turns out to be dead.

Connections are not pinged on checkout (a round trip per request). A connection the
server dropped is noticed by the statement that uses it: SQLAlchemy invalidates it and
every older pooled connection (``is_disconnect``), and idempotent reads retry once.

Row-level security (migration 0006) is the second wall behind every query's
``tenant_id`` filter: each transaction states whose rows it may see with the
per-transaction settings ``pulse.tenant_id`` (one tenant) or ``pulse.all_tenants``
(work that spans tenants: scheduler, sender, reaper, operator routes). A session
carries that context in ``session.info`` and sets it when its transaction begins;
a session without context sees no tenant-owned row at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog
from litestar import Request
from litestar.datastructures import State
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Session, SessionTransaction

from app.core.settings import Settings

log = structlog.get_logger("app.db")
T = TypeVar("T")

# One metadata for every module's tables, so Alembic sees them all.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def async_url(url: str) -> str:
    """Normalise ``postgres://`` / ``postgresql://`` URLs to the asyncpg driver."""
    parts = urlsplit(url)
    scheme = "postgresql+asyncpg" if parts.scheme in {"postgres", "postgresql"} else parts.scheme
    # libpq spells it sslmode; asyncpg spells it ssl.
    query = [("ssl", v) if k == "sslmode" else (k, v) for k, v in parse_qsl(parts.query)]
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def _is_lost_connection(exc: BaseException | None) -> bool:
    """asyncpg errors that mean the connection itself is gone (not the statement's fault)."""
    import asyncpg

    return isinstance(
        exc,
        asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.ConnectionFailureError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.CrashShutdownError
        | ConnectionError,
    )


_BOUND_OPTION = "pulse_statement_bound_s"
_BOUND_TIMER = "pulse_statement_bound_timer"
_BOUND_ABORTED = "pulse_statement_bound_aborted"


def _arm_statement_bound(
    conn: Connection, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool
) -> None:
    """Before a request session's statement: cut the connection if the statement has not
    come back within the bound. asyncpg has no per-statement timeout through SQLAlchemy,
    and the connection-wide one must stay above the bulk loads' long statements; a frozen
    server would otherwise hold the request for that long."""
    bound = context.execution_options.get(_BOUND_OPTION) if context is not None else None
    if not bound:
        return
    driver: Any = conn.connection.driver_connection
    conn.info[_BOUND_TIMER] = asyncio.get_running_loop().call_later(
        bound, _abort_statement, driver, conn.info
    )


def _disarm_statement_bound(conn: Connection, *_: Any) -> None:
    timer = conn.info.pop(_BOUND_TIMER, None)
    if timer is not None:
        timer.cancel()


def _abort_statement(driver: Any, info: dict[Any, Any]) -> None:
    info.pop(_BOUND_TIMER, None)
    if not driver.is_closed():
        log.warning("db.statement_bound_exceeded")
        info[_BOUND_ABORTED] = True
        driver.terminate()  # the statement fails with a lost connection: 503


def _mark_disconnects(context: ExceptionContext) -> None:
    """``handle_error`` hook: a lost connection is a disconnect, so SQLAlchemy drops it
    and every pooled connection older than it instead of handing them out again.

    A statement interrupted by a timeout or a cancellation leaves its connection in an
    unknown state; SQLAlchemy then closes it, politely, waiting up to 2 s for a server
    that may be frozen. Cutting the socket first makes that close immediate, so a
    request's database work stays within its bound."""
    original = context.original_exception
    if context.connection is not None:
        _disarm_statement_bound(context.connection)
        if context.connection.info.pop(_BOUND_ABORTED, False):
            # Cut by the request bound, not lost: the other pooled connections are fine.
            context.is_disconnect = True
            context.invalidate_pool_on_disconnect = False
            return
    if isinstance(original, asyncio.CancelledError | TimeoutError):
        _abort_driver_connection(context)
        return
    if context.is_disconnect:
        return
    if _is_lost_connection(original) or _is_lost_connection(original.__cause__):
        context.is_disconnect = True


def _abort_driver_connection(context: ExceptionContext) -> None:
    connection = context.connection
    if connection is None or connection.invalidated or connection.closed:
        return
    try:
        driver: Any = connection.connection.driver_connection
        if driver is not None:
            driver.terminate()
    except Exception:
        log.warning("db.abort_failed", exc_info=True)


# --- tenant context for row-level security ----------------------------------
TENANT_KEY = "pulse.tenant_id"
ALL_TENANTS_KEY = "pulse.all_tenants"
_BOUND_TENANT = "pulse.bound_tenant"
_SET_CONTEXT = text(
    "SELECT set_config('pulse.tenant_id', :tenant_id, true),"
    " set_config('pulse.all_tenants', :all_tenants, true)"
)


def tenant_context(tenant_id: str | None = None, *, all_tenants: bool = False) -> dict[str, Any]:
    """The ``session.info`` entries that select whose rows a session's transactions see."""
    if tenant_id is not None and all_tenants:
        raise ValueError("a unit of work is either one tenant's or all tenants', not both")
    return {TENANT_KEY: tenant_id, ALL_TENANTS_KEY: all_tenants}


class TenantSession(Session):
    """A Session that sets the row-level-security context when its transaction begins."""


@event.listens_for(TenantSession, "after_begin")
def _set_tenant_context(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    # Runs when the session first needs its connection, so a session that sends no
    # statement pays nothing. Always sent, also without context: that resets (for this
    # transaction) whatever a pooled connection still has at session level from
    # bind_tenant, so a unit of work without context sees no tenant's rows.
    connection.execute(
        _SET_CONTEXT,
        {
            "tenant_id": session.info.get(TENANT_KEY) or "",
            "all_tenants": "on" if session.info.get(ALL_TENANTS_KEY) else "off",
        },
    )


async def bind_tenant(conn: AsyncConnection, tenant_id: str) -> None:
    """Bind an autocommit read connection to ``tenant_id`` for row-level security.

    Autocommit reads have no transaction for a ``SET LOCAL``-style setting to live in,
    so the tenant is set at session level (``set_config(..., false)``) and stays with
    the pooled connection. ``conn.info`` lives exactly as long as the DBAPI connection
    (it is cleared when the connection is replaced), so it records which tenant is
    bound: the extra round trip is paid only when the connection last served another
    tenant (or is new). A transaction on the same connection later overrides the value
    locally in :func:`_set_tenant_context`, so a session-level leftover never widens
    what a unit of work sees. Autocommit connections only: inside a transaction that
    rolls back, PostgreSQL would undo the setting while ``conn.info`` still recorded it.
    """
    if conn.info.get(_BOUND_TENANT) == tenant_id:
        return
    await conn.execute(
        text("SELECT set_config('pulse.tenant_id', :tenant_id, false)"), {"tenant_id": tenant_id}
    )
    conn.info[_BOUND_TENANT] = tenant_id


async def retry_if_connection_died(attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()``, run once more when its connection turned out to be dead.

    Connections are not pinged on checkout: the first statement on a pooled connection
    the server dropped (a restart since) fails, and SQLAlchemy invalidates it and every
    older pooled one. An idempotent attempt is then worth one retry on a fresh
    connection; any other error, or a second failure, propagates.
    """
    try:
        return await attempt()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.info("db.retried_on_fresh_connection", error=type(exc.orig).__name__)
    return await attempt()


class Database:
    """Owns the process's engine and session factory."""

    def __init__(self, engine: AsyncEngine, *, request_timeout_s: float = 10.0) -> None:
        self.engine = engine
        self.sessionmaker = async_sessionmaker(
            engine, expire_on_commit=False, sync_session_class=TenantSession
        )
        self.request_timeout_s = request_timeout_s
        # Request sessions: every statement bounded by the request timeout (see
        # _arm_statement_bound); jobs use the plain sessionmaker and their own bounds.
        self.request_sessionmaker = async_sessionmaker(
            engine.execution_options(**{_BOUND_OPTION: request_timeout_s}),
            expire_on_commit=False,
            sync_session_class=TenantSession,
        )
        event.listen(engine.sync_engine, "handle_error", _mark_disconnects)
        event.listen(engine.sync_engine, "before_cursor_execute", _arm_statement_bound)
        event.listen(engine.sync_engine, "after_cursor_execute", _disarm_statement_bound)

    @classmethod
    def from_settings(cls, settings: Settings, url: str) -> Database:
        engine = create_async_engine(
            async_url(url),
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_s,
            # No pre-ping (a round trip per checkout): dead connections are detected by
            # their first statement (handle_error above) and reads retry once.
            pool_recycle=1800,
            # The most recently used connection first: a burst of one tenant's requests
            # reuses connections already bound to it (bind_tenant skips the round trip),
            # and idle surplus connections age out instead of being kept warm.
            pool_use_lifo=True,
            connect_args={
                "timeout": settings.db_connect_timeout_s,
                # The server's statement_timeout is the real bound (15 s by default; a
                # bulk load raises it for its transaction with SET LOCAL, up to 10 min).
                # This client-side limit is only the safety net for a server that stops
                # answering altogether, so it must sit above the largest of those.
                "command_timeout": max(settings.db_statement_timeout_ms / 1000, 600) + 30,
                "server_settings": {
                    "statement_timeout": str(settings.db_statement_timeout_ms),
                    "idle_in_transaction_session_timeout": "600000",
                    "application_name": "pulse",
                },
            },
        )
        return cls(engine, request_timeout_s=settings.db_request_timeout_s)

    def new_session(
        self, tenant_id: str | None = None, *, all_tenants: bool = False
    ) -> AsyncSession:
        """A session whose transactions see ``tenant_id``'s rows (or, explicitly, every
        tenant's); the caller closes it. Prefer :meth:`session`."""
        return self.sessionmaker(info=tenant_context(tenant_id, all_tenants=all_tenants))

    @asynccontextmanager
    async def session(
        self, tenant_id: str | None = None, *, all_tenants: bool = False
    ) -> AsyncIterator[AsyncSession]:
        """A session for one unit of background work. The caller commits explicitly;
        anything not committed is rolled back when the block exits.

        Row-level security: pass the tenant the work belongs to, or ``all_tenants=True``
        for work that spans tenants (claiming across tenants, reaping, scheduling); a
        session with neither sees no tenant-owned row.
        """
        async with self.new_session(tenant_id, all_tenants=all_tenants) as session:
            yield session

    @asynccontextmanager
    async def read_session(self, tenant_id: str) -> AsyncIterator[AsyncSession]:
        """The one way the request path gets a read connection: pooled, in autocommit
        (statements are sent without BEGIN/COMMIT), bound to ``tenant_id``.

        The session is only for reading; it never commits. Whatever goes wrong inside
        (a timeout, a cancellation, a lost connection), the connection is closed at
        once instead of going back to the pool in an unknown state.
        """
        conn = await self.engine.connect()
        try:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await bind_tenant(conn, tenant_id)
            async with AsyncSession(bind=conn, expire_on_commit=False) as session:
                yield session
        except (asyncio.CancelledError, TimeoutError, OSError, DBAPIError):
            # A statement may still be in flight, or the connection is already dead.
            await discard_connection(conn)
            raise
        except BaseException:
            await conn.close()  # autocommit: nothing to roll back, the connection is fine
            raise
        else:
            await conn.close()

    async def run_read(self, tenant_id: str, read: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run the idempotent ``read`` on a read session within the request timeout.

        A connection found dead (the server restarted since it was pooled) is retried
        once on a fresh one; anything else propagates. Every wait (pool, connect,
        statements) shares the one bound, so a database that stops answering costs a
        request at most ``PULSE_DB_REQUEST_TIMEOUT_S`` and then a ``TimeoutError``.
        """

        async def attempt() -> T:
            async with self.read_session(tenant_id) as session:
                return await read(session)

        async with asyncio.timeout(self.request_timeout_s):
            return await retry_if_connection_died(attempt)

    async def dispose(self) -> None:
        await self.engine.dispose()

    def pool_status(self) -> dict[str, int]:
        pool: Any = self.engine.pool
        return {
            "size": pool.size(),
            "checked_out": pool.checkedout(),
            "overflow": max(pool.overflow(), 0),
        }


async def discard_connection(conn: AsyncConnection) -> None:
    """Close ``conn`` for good without waiting on the server (which may be frozen)."""
    try:
        if not conn.invalidated and not conn.closed:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            if driver is not None:
                driver.terminate()  # closes the socket now, no goodbye message
            await conn.invalidate()
        await conn.close()
    except Exception:
        log.warning("db.discard_failed", exc_info=True)


def get_database(state: State) -> Database:
    db: Database = state.db
    return db


def request_tenant_context(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Whose rows a request's session sees: the route's ``tenant_id`` path parameter;
    routes without one see every tenant only when they are operator routes (listing or
    creating tenants), otherwise no tenant-owned row."""
    tenant_id = request.path_params.get("tenant_id")
    if tenant_id is not None:
        return tenant_context(str(tenant_id))
    operator_route = request.route_handler.opt.get("role") == "operator"
    return tenant_context(all_tenants=operator_route)


async def provide_db_session(
    state: State, request: Request[Any, Any, Any]
) -> AsyncIterator[AsyncSession]:
    """Request-scoped session: commit if the handler succeeded, roll back if it raised.

    Each of its statements, and the commit or rollback, is bounded by the request
    timeout (``PULSE_DB_REQUEST_TIMEOUT_S``); the handler's other work is not. Its
    transactions see the rows of the route's tenant (row-level security)."""
    db = get_database(state)
    async with db.request_sessionmaker(info=request_tenant_context(request)) as session:
        try:
            yield session
        except BaseException:
            async with asyncio.timeout(db.request_timeout_s):
                await session.rollback()
            raise
        else:
            if session.in_transaction():
                async with asyncio.timeout(db.request_timeout_s):
                    await session.commit()


async def raw_connection(conn: AsyncConnection | AsyncSession) -> Any:
    """The asyncpg connection behind a SQLAlchemy connection or session, in its transaction.

    SQLAlchemy's asyncpg adapter sends BEGIN lazily, on the first statement; work sent
    straight to the driver before that would run in autocommit mode and survive a
    rollback. So make sure the transaction has really begun first.
    """
    connection = await conn.connection() if isinstance(conn, AsyncSession) else conn
    fairy = await connection.get_raw_connection()
    driver: Any = fairy.driver_connection
    if not driver.is_in_transaction():
        await connection.execute(text("SELECT 1"))
    return driver


async def copy_rows(
    conn: AsyncConnection | AsyncSession,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    schema: str | None = None,
) -> int:
    """COPY ``rows`` into ``table`` over the caller's connection, inside its transaction.

    Values are passed in asyncpg's binary COPY format: ``json``/``jsonb`` columns
    take JSON text (``msgspec.json.encode(value).decode()``), timestamps take
    aware datetimes. Returns the number of rows copied. Nothing is committed here.
    """
    records = rows if isinstance(rows, list) else list(rows)
    if not records:
        return 0
    driver = await raw_connection(conn)
    await driver.copy_records_to_table(
        table, records=records, columns=list(columns), schema_name=schema
    )
    return len(records)


async def copy_rows_through_staging(
    session: AsyncSession, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """Like :func:`copy_rows`, into a table under row-level security.

    PostgreSQL refuses ``COPY FROM`` into a table with row-level security for a role the
    policies bind ("COPY FROM not supported with row-level security"). So the rows go by
    COPY into a temporary table shaped like ``table`` (dropped at commit), then into
    ``table`` with one ``INSERT ... SELECT``, which the policy checks row by row.
    """
    records = rows if isinstance(rows, list) else list(rows)
    if not records:
        return 0
    staging = f"pulse_copy_{table}"
    column_list = ", ".join(f'"{c}"' for c in columns)
    await session.execute(text(f"DROP TABLE IF EXISTS pg_temp.{staging}"))
    await session.execute(
        text(f"CREATE TEMPORARY TABLE {staging} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP")
    )
    await copy_rows(session, staging, columns, records, schema="pg_temp")
    await session.execute(
        text(f"INSERT INTO {table} ({column_list}) SELECT {column_list} FROM pg_temp.{staging}")
    )
    return len(records)
