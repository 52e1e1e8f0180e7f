"""The one database engine, sessions for requests and jobs, and a COPY helper.

Pulse has exactly one :class:`Database` per process: one SQLAlchemy
``AsyncEngine`` (asyncpg) and its pool, created in the lifespan and disposed at
shutdown. Request handlers receive an ``AsyncSession`` through dependency
injection that commits on success and rolls back on error; background work opens
``async with db.session()`` per unit of work and commits explicitly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from litestar.datastructures import State
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

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


class Database:
    """Owns the process's engine and session factory."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessionmaker = async_sessionmaker(engine, expire_on_commit=False)

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

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for one unit of background work. The caller commits explicitly;
        anything not committed is rolled back when the block exits."""
        async with self.sessionmaker() as session:
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


async def provide_db_session(state: State) -> AsyncIterator[AsyncSession]:
    """Request-scoped session: commit if the handler succeeded, roll back if it raised."""
    async with get_database(state).sessionmaker() as session:
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
