"""Fixtures for the notifications tests: a database handle and tenants with preferences."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import text

from app.core.db import Database
from app.core.settings import Settings
from app.modules.notifications import repository
from tests.fixtures.smtp import smtp_server, smtp_server_context, smtp_tls

# The SMTP fixtures are used only here, so they are imported rather than registered globally.
__all__ = ["smtp_server", "smtp_server_context", "smtp_tls"]

MakeTenant = Callable[..., Awaitable[str]]


@pytest.fixture
async def db(settings: Settings, database_url: str, clean_tables: None) -> AsyncIterator[Database]:
    database = Database.from_settings(settings, database_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def tenant_with_recipients(db: Database) -> MakeTenant:
    """Insert a tenant row and its notification preferences straight into the database."""

    async def make(
        tenant_id: str = "acme",
        *,
        name: str = "Acme Inc",
        timezone: str = "Europe/Berlin",
        recipients: list[str] | None = None,
        **preferences: object,
    ) -> str:
        async with db.session() as session:
            await session.execute(
                text(
                    "INSERT INTO tenants (id, name, timezone) VALUES (:id, :name, :tz)"
                    " ON CONFLICT (id) DO NOTHING"
                ),
                {"id": tenant_id, "name": name, "tz": timezone},
            )
            await repository.upsert_preferences(
                session,
                tenant_id,
                {"recipients": recipients or ["ops@acme.test"], **preferences},
            )
            await session.commit()
        return tenant_id

    return make
