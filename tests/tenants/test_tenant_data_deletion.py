"""Deleting a tenant deletes its data: every tenant-owned table cascades from tenants.id."""

from __future__ import annotations

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fixtures.oidc import AuthHeaders

# Tables with a tenant_id that deliberately do not reference tenants (none so far).
# Adding one here needs a reason next to it.
EXEMPT: dict[str, str] = {}

TENANT_TABLES = text(
    """
    SELECT c.table_name
    FROM information_schema.columns c
    JOIN information_schema.tables t
      ON t.table_schema = c.table_schema AND t.table_name = c.table_name
    WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id'
      AND t.table_type = 'BASE TABLE'
    ORDER BY 1
    """
)
CASCADING = text(
    """
    SELECT DISTINCT con.conrelid::regclass::text
    FROM pg_constraint con
    JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey)
    WHERE con.contype = 'f' AND con.confrelid = 'tenants'::regclass
      AND con.confdeltype = 'c' AND a.attname = 'tenant_id'
    """
)


async def test_every_tenant_owned_table_cascades_from_tenants(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        owned = set((await conn.execute(TENANT_TABLES)).scalars())
        cascading = {name.strip('"') for name in (await conn.execute(CASCADING)).scalars()}
    missing = sorted(owned - cascading - set(EXEMPT))
    assert missing == [], (
        f"tables with tenant_id but no FOREIGN KEY (tenant_id) REFERENCES tenants(id)"
        f" ON DELETE CASCADE: {missing}"
    )


async def test_deleting_a_tenant_removes_rows_that_reference_it(
    client: httpx.AsyncClient, auth_headers: AuthHeaders, engine: AsyncEngine
) -> None:
    headers = auth_headers(None, "operator")
    for tenant in ("acme", "beta"):
        body = {"id": tenant, "name": tenant.title(), "timezone": "UTC"}
        assert (await client.post("/api/v1/tenants", json=body, headers=headers)).status_code == 201
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE cascade_probe (tenant_id varchar(63) NOT NULL"
                " REFERENCES tenants(id) ON DELETE CASCADE, n int)"
            )
        )
        await conn.execute(text("INSERT INTO cascade_probe VALUES ('acme', 1), ('beta', 2)"))
    try:
        assert (await client.delete("/api/v1/tenants/acme", headers=headers)).status_code == 204
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT tenant_id FROM cascade_probe"))).all()
        assert [r.tenant_id for r in rows] == ["beta"]
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE cascade_probe"))
