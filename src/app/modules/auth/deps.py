"""Dependency providers: ``principal`` for handlers (``principal: Principal``)."""

from __future__ import annotations

from typing import Any

from litestar import Request

from app.modules.auth.errors import missing_token
from app.modules.auth.guards import PRINCIPAL_KEY
from app.modules.auth.principal import Principal


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """The caller, as authenticated by the app guard before the handler runs."""
    principal = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):
        # Only a public route can get here; it should not ask who is calling.
        raise missing_token()
    return principal
