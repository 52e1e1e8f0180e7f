"""Walk the app's route table: new routes are covered without touching this file.

- every non-public route answers 401 without a token;
- every route with ``{tenant_id}`` answers 404 to a member of another tenant;
- every admin/operator route answers 403 to a viewer (of the tenant in the path).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute

from app.core.settings import Settings
from app.main import create_app
from tests.fixtures.oidc import AuthHeaders

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
SCHEMA_PREFIX = "/schema"


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # concrete, with parameters filled in
    template: str
    handler: HTTPRouteHandler

    @property
    def public(self) -> bool:
        if self.handler.opt.get("public") is True:
            return True
        module = self.handler.fn.__module__
        # Litestar's own handlers: the OpenAPI documents/UIs and automatic OPTIONS answers.
        return module.startswith("litestar.") and (
            self.method == "OPTIONS" or self.template.startswith(SCHEMA_PREFIX)
        )

    @property
    def tenant_scoped(self) -> bool:
        return "{tenant_id:" in self.template

    @property
    def role(self) -> str | None:
        return self.handler.opt.get("role")

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


def _value(name: str, kind: type[Any]) -> str:
    if name == "tenant_id":
        return TENANT_B
    if kind is int or kind is float:
        return "1"
    if kind is uuid.UUID:
        return str(uuid.uuid4())
    if kind is dt.datetime:
        return "2026-01-01T00:00:00Z"
    if kind is dt.date:
        return "2026-01-01"
    return "x"


def endpoints(app: Litestar) -> Iterator[Endpoint]:
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = route.path
        for name, definition in route.path_parameters.items():
            path = path.replace("{" + definition.full + "}", _value(name, definition.type))
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods):
                if method == "HEAD":
                    continue
                yield Endpoint(method, path, route.path, handler)


@pytest.fixture
def all_endpoints(settings: Settings) -> list[Endpoint]:
    found = list(endpoints(create_app(settings)))
    assert any(e.template == "/api/v1/tenants/{tenant_id:str}" for e in found)
    return found


async def test_every_non_public_route_needs_a_token(
    client: httpx.AsyncClient, all_endpoints: list[Endpoint]
) -> None:
    checked = 0
    for endpoint in all_endpoints:
        if endpoint.public:
            continue
        response = await client.request(endpoint.method, endpoint.path)
        assert response.status_code == 401, (
            f"{endpoint} answered {response.status_code} without a token"
        )
        assert response.headers["www-authenticate"].startswith("Bearer")
        checked += 1
    assert checked >= 5


async def test_no_api_route_is_public(all_endpoints: list[Endpoint]) -> None:
    # Public pages (health, metrics, OpenAPI, dev issuer, the web shell) live outside /api/;
    # data never does.
    public_api = sorted(
        {
            str(e)
            for e in all_endpoints
            if e.public and e.method != "OPTIONS" and e.template.startswith("/api/")
        }
    )
    assert public_api == [], public_api


async def test_member_of_another_tenant_gets_404_on_every_tenant_route(
    client: httpx.AsyncClient, all_endpoints: list[Endpoint], auth_headers: AuthHeaders
) -> None:
    headers = auth_headers(TENANT_A, "admin")
    scoped = [e for e in all_endpoints if e.tenant_scoped and not e.public]
    assert scoped
    for endpoint in scoped:
        response = await client.request(endpoint.method, endpoint.path, headers=headers)
        assert response.status_code == 404, (
            f"{endpoint} answered {response.status_code} to tenant A"
        )
        assert response.json()["detail"] == f"No tenant {TENANT_B!r}."


async def test_viewer_gets_403_on_admin_and_operator_routes(
    client: httpx.AsyncClient, all_endpoints: list[Endpoint], auth_headers: AuthHeaders
) -> None:
    headers = auth_headers(TENANT_B, "viewer")
    privileged = [e for e in all_endpoints if e.role in {"admin", "operator"} and not e.public]
    assert privileged
    for endpoint in privileged:
        response = await client.request(endpoint.method, endpoint.path, headers=headers)
        assert response.status_code == 403, (
            f"{endpoint} answered {response.status_code} to a viewer"
        )


async def test_admin_gets_403_on_operator_routes(
    client: httpx.AsyncClient, all_endpoints: list[Endpoint], auth_headers: AuthHeaders
) -> None:
    headers = auth_headers(TENANT_B, "admin")
    for endpoint in (e for e in all_endpoints if e.role == "operator"):
        response = await client.request(endpoint.method, endpoint.path, headers=headers)
        assert response.status_code == 403, (
            f"{endpoint} answered {response.status_code} to an admin"
        )


async def test_every_route_declares_a_known_role_or_none(all_endpoints: list[Endpoint]) -> None:
    for endpoint in all_endpoints:
        assert endpoint.role in {None, "viewer", "admin", "operator"}, str(endpoint)


async def test_tenant_path_parameters_are_named_tenant_id(settings: Settings) -> None:
    # The guard's membership check keys on the name "tenant_id": a route that spells it
    # differently would skip it.
    for route in create_app(settings).routes:
        for name in getattr(route, "path_parameters", {}):
            if "tenant" in name.lower():
                assert name == "tenant_id", f"{route.path}: call the parameter tenant_id"


async def _create_tenants(client: httpx.AsyncClient, operator: dict[str, str]) -> None:
    for tenant in (TENANT_A, TENANT_B):
        body = {"id": tenant, "name": tenant, "timezone": "UTC"}
        response = await client.post("/api/v1/tenants", json=body, headers=operator)
        assert response.status_code == 201, response.text


async def test_admin_of_a_and_viewer_of_b_is_admin_only_in_a(
    client: httpx.AsyncClient, all_endpoints: list[Endpoint], auth_headers: AuthHeaders
) -> None:
    await _create_tenants(client, auth_headers(None, "operator"))
    headers = auth_headers(None, [], tenant_roles={TENANT_A: ["admin"], TENANT_B: ["viewer"]})
    admin_routes = [
        e for e in all_endpoints if e.role == "admin" and e.tenant_scoped and not e.public
    ]
    assert admin_routes
    for endpoint in admin_routes:
        in_b = await client.request(endpoint.method, endpoint.path, headers=headers)
        assert in_b.status_code == 403, f"{endpoint} answered {in_b.status_code} in B"
        path_a = endpoint.path.replace(f"/{TENANT_B}/", f"/{TENANT_A}/")
        if path_a.endswith(f"/{TENANT_B}"):
            path_a = path_a[: -len(TENANT_B)] + TENANT_A
        in_a = await client.request(endpoint.method, path_a, headers=headers)
        # Past the guard: the route's own answer (200, or 400/404 for the made-up body and ids).
        assert in_a.status_code not in {401, 403}, f"{endpoint} answered {in_a.status_code} in A"
        if in_a.status_code == 404:
            assert in_a.json()["detail"] != f"No tenant {TENANT_A!r}.", str(endpoint)
    for path in ("sources", "runs", "notifications"):
        in_a = await client.get(f"/api/v1/tenants/{TENANT_A}/{path}", headers=headers)
        assert in_a.status_code == 200, f"{path}: {in_a.status_code} {in_a.text}"
        in_b = await client.get(f"/api/v1/tenants/{TENANT_B}/{path}", headers=headers)
        assert in_b.status_code == 403, f"{path}: {in_b.status_code} {in_b.text}"
    # B's viewer routes stay open to its viewer.
    viewer_in_b = await client.get(f"/api/v1/tenants/{TENANT_B}", headers=headers)
    assert viewer_in_b.status_code == 200, viewer_in_b.text


async def test_the_role_name_operator_reaches_no_tenant(
    client: httpx.AsyncClient, all_endpoints: list[Endpoint], auth_headers: AuthHeaders
) -> None:
    # An IdP can put "operator" in a roles claim by accident or by a user's own group name:
    # only the configured operator grant counts.
    headers = auth_headers(TENANT_A, "viewer", roles=["operator", "admin"])
    for endpoint in (e for e in all_endpoints if e.role == "operator" and not e.public):
        response = await client.request(endpoint.method, endpoint.path, headers=headers)
        assert response.status_code in {403, 404}, (
            f"{endpoint} answered {response.status_code} to the role name operator"
        )
    scoped = [e for e in all_endpoints if e.tenant_scoped and not e.public]
    for endpoint in scoped:
        response = await client.request(endpoint.method, endpoint.path, headers=headers)
        assert response.status_code == 404, f"{endpoint} answered {response.status_code} in B"
