"""The development issuer's discovery and JWKS, on the app itself."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.datastructures import State

from app.core.errors import NotFound, error_responses
from app.core.openapi import DEV_ISSUER_PATH
from app.dev.issuer import DevIssuer


def running_dev_issuer(state: State) -> DevIssuer:
    """The issuer the development lifespan started, or 404 (a real issuer is configured)."""
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
        return running_dev_issuer(state).discovery()

    @get(
        "/jwks.json",
        operation_id="getDevIssuerJwks",
        summary="Development issuer: public signing keys",
        responses=error_responses(404),
        sync_to_thread=False,
    )
    def jwks(self, state: State) -> dict[str, Any]:
        return running_dev_issuer(state).jwks
