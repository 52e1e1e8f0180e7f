"""The one app-level guard: deny by default, then tenant membership, then role.

A route is public only if its handler (or controller/router) says ``opt={"public": True}``,
plus Litestar's own OpenAPI routes under the schema path and its automatic OPTIONS handlers.
Every other route needs a valid bearer token. For a path with ``{tenant_id}`` the caller
must be a member of that tenant (or an operator) - otherwise 404, so tenant ids don't leak -
before the role in ``opt={"role": ...}`` is checked (403) against the caller's roles *in that
tenant*: an admin of one tenant is not an admin of another where it is only a viewer.
"""

from __future__ import annotations

from typing import Any

import structlog
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from app.core.errors import NotFound, Unauthorized
from app.modules.auth.deps import PRINCIPAL_KEY, auth_metrics_of, authenticator_of
from app.modules.auth.errors import (
    IdentityProviderUnavailable,
    InvalidToken,
    idp_unavailable,
    insufficient_role,
    invalid_request,
    invalid_token,
    missing_token,
)
from app.modules.auth.principal import ROLE_RANK, Principal

log = structlog.get_logger("app.auth")


def is_public(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> bool:
    if handler.opt.get("public") is True:
        return True
    module = getattr(getattr(handler, "fn", None), "__module__", "") or ""
    if not module.startswith("litestar."):
        return False
    # Litestar's automatic OPTIONS answer carries only the allowed methods.
    methods = getattr(handler, "http_methods", None)
    if methods is not None and set(methods) == {"OPTIONS"}:
        return True
    # The OpenAPI plugin's routes (schema documents and UIs) under the configured path.
    config = connection.app.openapi_config
    schema_path = "/" + ((config.path if config else None) or "/schema").strip("/")
    path = connection.scope["path"]
    return path == schema_path or path.startswith(schema_path + "/")


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = connection.headers.get("authorization")
    if not header:
        raise missing_token()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise missing_token()
    token = token.strip()
    if not token or " " in token:
        raise invalid_request("the Authorization header must be: Bearer <token>")
    return token


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The caller of this connection (cached on the connection), or an HTTP error."""
    state = connection.scope.setdefault("state", {})
    cached = state.get(PRINCIPAL_KEY)
    if isinstance(cached, Principal):
        return cached
    try:
        token = bearer_token(connection)
    except Unauthorized:
        _count_rejection(connection, "missing")
        raise
    authenticator = authenticator_of(connection.app.state)
    if authenticator is None:
        raise idp_unavailable()
    try:
        principal = await authenticator.authenticate(token)
    except InvalidToken as exc:
        log.debug("auth.rejected", reason=exc.reason, path=connection.url.path)
        _count_rejection(connection, exc.reason)
        raise invalid_token(exc.description) from None
    except IdentityProviderUnavailable as exc:
        log.warning("auth.idp_unavailable", error=str(exc), path=connection.url.path)
        _count_rejection(connection, "idp_unavailable")
        raise idp_unavailable() from None
    state[PRINCIPAL_KEY] = principal
    connection.scope["user"] = principal
    return principal


def _count_rejection(connection: ASGIConnection[Any, Any, Any, Any], reason: str) -> None:
    metrics = auth_metrics_of(connection.app.state)
    if metrics is not None:
        metrics.rejections.labels(reason=reason).inc()


async def require_access(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """App-level guard; runs before any dependency or handler code."""
    if is_public(connection, handler):
        return
    principal = await authenticate(connection)
    raw_tenant = connection.path_params.get("tenant_id")
    tenant_id = None if raw_tenant is None else str(raw_tenant)
    if tenant_id is not None and not principal.can_access(tenant_id):
        raise NotFound(f"No tenant {tenant_id!r}.")
    role = handler.opt.get("role")
    if role is not None:
        if role not in ROLE_RANK:
            raise RuntimeError(f"route {handler.paths} declares unknown role {role!r}")
        if not principal.has_role(role, tenant_id):
            raise insufficient_role(role)
