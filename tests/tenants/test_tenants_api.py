from __future__ import annotations

import httpx
from litestar import Litestar

from app.modules.tenants import TenantCreate, create_tenant, get_tenant, get_tenant_config
from tests.fixtures.oidc import AuthHeaders

ACME = {"id": "acme", "name": "Acme Inc", "timezone": "Europe/Berlin"}


async def test_operator_creates_tenant_201(
    client: httpx.AsyncClient, auth_headers: AuthHeaders
) -> None:
    response = await client.post(
        "/api/v1/tenants", json=ACME, headers=auth_headers(None, "operator")
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"] == "acme"
    assert body["timezone"] == "Europe/Berlin"
    assert body["settings"] == {"conversion_events": ["purchase"]}
    assert body["created_at"]
    assert body["updated_at"]


async def test_duplicate_tenant_is_409(
    client: httpx.AsyncClient, auth_headers: AuthHeaders
) -> None:
    headers = auth_headers(None, "operator")
    assert (await client.post("/api/v1/tenants", json=ACME, headers=headers)).status_code == 201
    response = await client.post("/api/v1/tenants", json=ACME, headers=headers)
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"


async def test_bad_slug_and_bad_timezone_are_400(
    client: httpx.AsyncClient, auth_headers: AuthHeaders
) -> None:
    headers = auth_headers(None, "operator")
    for body in (
        {**ACME, "id": "Acme!"},
        {**ACME, "id": "-acme"},
        {**ACME, "id": "a" * 64},
        {**ACME, "timezone": "Mars/Olympus"},
        {**ACME, "timezone": "localtime"},
    ):
        response = await client.post("/api/v1/tenants", json=body, headers=headers)
        assert response.status_code == 400, (body, response.text)


async def test_admin_cannot_create_tenants(
    client: httpx.AsyncClient, auth_headers: AuthHeaders
) -> None:
    response = await client.post(
        "/api/v1/tenants", json=ACME, headers=auth_headers("acme", "admin")
    )
    assert response.status_code == 403


async def test_list_is_paginated_by_cursor(
    client: httpx.AsyncClient, auth_headers: AuthHeaders
) -> None:
    headers = auth_headers(None, "operator")
    for i in range(5):
        body = {"id": f"t{i}", "name": f"T{i}", "timezone": "UTC"}
        assert (await client.post("/api/v1/tenants", json=body, headers=headers)).status_code == 201
    first = (await client.get("/api/v1/tenants?limit=2", headers=headers)).json()
    assert [t["id"] for t in first["items"]] == ["t0", "t1"]
    assert first["next_cursor"] == "t1"
    second = (
        await client.get(f"/api/v1/tenants?limit=2&cursor={first['next_cursor']}", headers=headers)
    ).json()
    assert [t["id"] for t in second["items"]] == ["t2", "t3"]
    last = (await client.get("/api/v1/tenants?limit=2&cursor=t3", headers=headers)).json()
    assert [t["id"] for t in last["items"]] == ["t4"]
    assert last["next_cursor"] is None
    bad = await client.get("/api/v1/tenants?limit=0", headers=headers)
    assert bad.status_code == 400


async def test_patch_changes_only_given_fields(
    client: httpx.AsyncClient, auth_headers: AuthHeaders
) -> None:
    headers = auth_headers(None, "operator")
    created = (await client.post("/api/v1/tenants", json=ACME, headers=headers)).json()
    response = await client.patch(
        "/api/v1/tenants/acme",
        json={"timezone": "America/New_York", "settings": {"conversion_events": ["signup"]}},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "Acme Inc"
    assert body["timezone"] == "America/New_York"
    assert body["settings"]["conversion_events"] == ["signup"]
    assert body["updated_at"] >= created["updated_at"]
    bad = await client.patch(
        "/api/v1/tenants/acme", json={"timezone": "Nope/Nope"}, headers=headers
    )
    assert bad.status_code == 400
    unknown = await client.patch("/api/v1/tenants/acme", json={"colour": "red"}, headers=headers)
    assert unknown.status_code == 400
    missing = await client.patch("/api/v1/tenants/ghost", json={"name": "x"}, headers=headers)
    assert missing.status_code == 404


async def test_members_read_their_tenant_but_only_operators_change_it(
    client: httpx.AsyncClient, auth_headers: AuthHeaders
) -> None:
    await client.post("/api/v1/tenants", json=ACME, headers=auth_headers(None, "operator"))
    viewer = auth_headers("acme", "viewer")
    assert (await client.get("/api/v1/tenants/acme", headers=viewer)).status_code == 200
    admin = auth_headers("acme", "admin")
    assert (
        await client.patch("/api/v1/tenants/acme", json={"name": "x"}, headers=admin)
    ).status_code == 403
    assert (await client.delete("/api/v1/tenants/acme", headers=admin)).status_code == 403
    other = auth_headers("beta", "admin")
    assert (await client.get("/api/v1/tenants/acme", headers=other)).status_code == 404


async def test_delete_removes_tenant(client: httpx.AsyncClient, auth_headers: AuthHeaders) -> None:
    headers = auth_headers(None, "operator")
    await client.post("/api/v1/tenants", json=ACME, headers=headers)
    assert (await client.delete("/api/v1/tenants/acme", headers=headers)).status_code == 204
    assert (await client.get("/api/v1/tenants/acme", headers=headers)).status_code == 404
    assert (await client.delete("/api/v1/tenants/acme", headers=headers)).status_code == 404


async def test_service_functions_for_other_modules(
    app: Litestar, client: httpx.AsyncClient
) -> None:
    async with app.state.db.session(all_tenants=True) as session:
        await create_tenant(session, TenantCreate(id="acme", name="Acme", timezone="Europe/Berlin"))
        await session.commit()
    async with app.state.db.session(all_tenants=True) as session:
        tenant = await get_tenant(session, "acme")
        config = await get_tenant_config(session, "acme")
    assert tenant.name == "Acme"
    assert config.timezone == "Europe/Berlin"
    assert config.conversion_events == ("purchase",)
