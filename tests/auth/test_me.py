from __future__ import annotations

import httpx

from tests.fixtures.oidc import AuthHeaders


async def test_me_without_token_is_401_with_plain_bearer_challenge(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="pulse"'
    assert response.headers["content-type"] == "application/problem+json"


async def test_me_returns_subject_tenants_and_roles(
    client: httpx.AsyncClient, auth_headers: AuthHeaders
) -> None:
    response = await client.get("/api/v1/me", headers=auth_headers(["acme", "beta"], "viewer"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["subject"] == "user-multi"
    assert body["tenants"] == ["acme", "beta"]
    assert body["roles"] == ["viewer"]
    assert body["tenant_roles"] == {"acme": ["viewer"], "beta": ["viewer"]}
    assert body["is_operator"] is False


async def test_me_returns_roles_per_tenant(
    client: httpx.AsyncClient, auth_headers: AuthHeaders
) -> None:
    headers = auth_headers(None, [], tenant_roles={"acme": ["admin"], "beta": ["viewer"]})
    body = (await client.get("/api/v1/me", headers=headers)).json()
    assert body["tenants"] == ["acme", "beta"]
    assert body["tenant_roles"] == {"acme": ["admin"], "beta": ["viewer"]}
    assert body["roles"] == ["admin", "viewer"]


async def test_public_routes_need_no_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/schema/openapi.json")).status_code == 200


async def test_rejections_and_jwks_fetches_are_counted(
    client: httpx.AsyncClient, auth_headers: AuthHeaders
) -> None:
    await client.get("/api/v1/me")
    await client.get("/api/v1/me", headers={"Authorization": "Bearer a.b.c"})
    assert (await client.get("/api/v1/me", headers=auth_headers())).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'pulse_auth_rejections_total{reason="missing"} 1.0' in metrics
    assert 'pulse_auth_rejections_total{reason="malformed"} 1.0' in metrics
    assert 'pulse_oidc_jwks_fetches_total{outcome="ok"} 1.0' in metrics
