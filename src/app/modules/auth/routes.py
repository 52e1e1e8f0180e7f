"""``GET /api/v1/me`` and the development issuer's discovery and JWKS."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from app.core.errors import NotFound, error_responses
from app.modules.auth.dev_issuer import DEV_ISSUER_PATH, DevIssuer
from app.modules.auth.principal import Principal
from app.modules.auth.schemas import Me


class MeController(Controller):
    path = "/api/v1/me"
    tags = ["auth"]

    @get(
        "/",
        operation_id="getMe",
        summary="The caller: subject, tenants and the roles in each, from the access token",
        responses=error_responses(401, 503),
    )
    async def me(self, principal: NamedDependency[Principal]) -> Me:
        return Me(
            subject=principal.subject,
            tenants=sorted(principal.tenants),
            roles=sorted(frozenset().union(*principal.tenant_roles.values())),
            tenant_roles={t: sorted(r) for t, r in sorted(principal.tenant_roles.items())},
            is_operator=principal.is_operator,
            client_id=principal.client_id,
            expires_at=principal.expires_at,
        )


def _dev_issuer(state: State) -> DevIssuer:
    issuer: DevIssuer | None = getattr(state, "dev_issuer", None)
    if issuer is None:
        raise NotFound("The development issuer is not running.")
    return issuer


class DevIssuerController(Controller):
    """Served only while the development issuer runs; 404 otherwise."""

    path = DEV_ISSUER_PATH
    tags = ["auth"]
    opt = {"public": True}
    include_in_schema = False

    @get(
        "/.well-known/openid-configuration",
        operation_id="getDevIssuerDiscovery",
        summary="Development issuer: OpenID Connect discovery",
        responses=error_responses(404),
        sync_to_thread=False,
    )
    def discovery(self, state: State) -> dict[str, Any]:
        return _dev_issuer(state).discovery()

    @get(
        "/jwks.json",
        operation_id="getDevIssuerJwks",
        summary="Development issuer: public signing keys",
        responses=error_responses(404),
        sync_to_thread=False,
    )
    def jwks(self, state: State) -> dict[str, Any]:
        return _dev_issuer(state).jwks
