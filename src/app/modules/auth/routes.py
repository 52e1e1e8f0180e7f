"""``GET /api/v1/me``."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency

from app.core.errors import error_responses
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
