"""Auth: who is calling (OIDC access tokens) and what they may see (roles, tenants).

Public interface for other modules:

- ``Principal`` and the ``principal`` dependency (``async def h(principal: Principal)``);
- route ``opt={"role": "viewer" | "admin" | "operator"}`` and ``opt={"public": True}``;
- the app guard ``require_access`` (installed for every route through ``module.guards``).
"""

from __future__ import annotations

from litestar.di import Provide

from app.modules import Module
from app.modules.auth.deps import provide_principal
from app.modules.auth.dev_authorize import DevAuthorizeController
from app.modules.auth.guards import require_access
from app.modules.auth.lifespan import auth_lifespan
from app.modules.auth.principal import ROLES, Principal, Role
from app.modules.auth.routes import DevIssuerController, MeController

module = Module(
    name="auth",
    route_handlers=[MeController, DevIssuerController, DevAuthorizeController],
    dependencies={"principal": Provide(provide_principal, sync_to_thread=False)},
    guards=[require_access],
    lifespan=[auth_lifespan],
)

__all__ = ["ROLES", "Principal", "Role", "module", "require_access"]
