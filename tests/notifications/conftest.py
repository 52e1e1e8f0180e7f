"""Fixtures for the notifications tests: a database handle and tenants with preferences."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from app.core.db import Database
from app.core.settings import Settings
from app.modules.notifications import repository
from app.modules.tenants import TenantCreate, create_tenant, tenant_exists
from tests.fixtures.smtp import smtp_server, smtp_server_context, smtp_tls

# The SMTP fixtures are used only here, so they are imported rather than registered globally.
__all__ = ["smtp_server", "smtp_server_context", "smtp_tls"]

MakeTenant = Callable[..., Awaitable[str]]


@pytest.fixture
async def db(settings: Settings, database_url: str, clean_tables: None) -> AsyncIterator[Database]:
    # As the app's role: the sender and digest work under row-level security.
    database = Database.from_settings(settings, settings.database_url or database_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def tenant_with_recipients(db: Database) -> MakeTenant:
    """Create a tenant (tenants service) and set its notification preferences."""

    async def make(
        tenant_id: str = "acme",
        *,
        name: str = "Acme Inc",
        timezone: str = "Europe/Berlin",
        recipients: list[str] | None = None,
        **preferences: object,
    ) -> str:
        async with db.session(all_tenants=True) as session:
            if not await tenant_exists(session, tenant_id):
                await create_tenant(
                    session, TenantCreate(id=tenant_id, name=name, timezone=timezone)
                )
            await repository.upsert_preferences(
                session,
                tenant_id,
                {"recipients": recipients or ["ops@acme.test"], **preferences},
            )
            await session.commit()
        return tenant_id

    return make
