"""The one database engine, sessions for requests and jobs, and a COPY helper.

Pulse has exactly one :class:`Database` per process: one SQLAlchemy
``AsyncEngine`` (asyncpg) and its pool, created in the lifespan and disposed at
shutdown. Request handlers receive an ``AsyncSession`` through dependency
injection that commits on success and rolls back on error; background work opens
``async with db.session(tenant_id=...)`` per unit of work and commits explicitly.

Row-level security (migration 0006) is the second wall behind every query's
``tenant_id`` filter: each transaction states whose rows it may see with the
per-transaction settings ``pulse.tenant_id`` (one tenant) or ``pulse.all_tenants``
(work that spans tenants: scheduler, sender, reaper, operator routes). A session
carries that context in ``session.info`` and sets it when its transaction begins;
a session without context sees no tenant-owned row at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from litestar import Request
from litestar.datastructures import State
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Session, SessionTransaction

from app.core.settings import Settings

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


class Database:
    """Owns the process's engine and session factory."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessionmaker = async_sessionmaker(
            engine, expire_on_commit=False, sync_session_class=TenantSession
        )

    @classmethod
    def from_settings(cls, settings: Settings, url: str) -> Database:
        engine = create_async_engine(
            async_url(url),
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_s,
            # A database restart must not need an app restart: test connections on checkout.
            pool_pre_ping=True,
            pool_recycle=1800,
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
        return cls(engine)

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

    async def dispose(self) -> None:
        await self.engine.dispose()

    def pool_status(self) -> dict[str, int]:
        pool: Any = self.engine.pool
        return {
            "size": pool.size(),
            "checked_out": pool.checkedout(),
            "overflow": max(pool.overflow(), 0),
        }


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
    """Request-scoped session: commit if the handler succeeded, roll back if it raised."""
    async with get_database(state).sessionmaker(info=request_tenant_context(request)) as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            if session.in_transaction():
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
