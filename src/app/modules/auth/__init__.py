"""Auth: who is calling (OIDC access tokens) and what they may see (roles, tenants).

Public interface for other modules:

- ``Principal`` and the ``principal`` dependency (``async def h(principal: Principal)``);
- route ``opt={"role": "viewer" | "admin" | "operator"}`` and ``opt={"public": True}``;
- the app guard ``require_access`` (installed for every route through ``module.guards``);
- ``issuer_discovery`` (the configured issuer's discovery document, fetched once);
- ``ClaimMapping``, ``KeySet`` and ``parse_jwks`` for an in-process issuer (``app.dev.issuer``).
"""

from __future__ import annotations

from litestar.di import Provide

from app.modules import Module
from app.modules.auth.claims import ClaimMapping
from app.modules.auth.deps import issuer_discovery, provide_principal
from app.modules.auth.guards import require_access
from app.modules.auth.key_sources import OidcDiscovery
from app.modules.auth.keys import KeySet, parse_jwks
from app.modules.auth.lifespan import auth_lifespan
from app.modules.auth.principal import ROLES, Principal, Role
from app.modules.auth.routes import MeController

module = Module(
    name="auth",
    route_handlers=[MeController],
    dependencies={"principal": Provide(provide_principal, sync_to_thread=False)},
    guards=[require_access],
    lifespan=[auth_lifespan],
)

__all__ = [
    "ROLES",
    "ClaimMapping",
    "KeySet",
    "OidcDiscovery",
    "Principal",
    "Role",
    "issuer_discovery",
    "module",
    "parse_jwks",
    "require_access",
]
