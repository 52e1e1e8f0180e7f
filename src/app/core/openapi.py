"""The OpenAPI document and its UI: Swagger UI served from a pinned wheel, sign-in included.

The UI's JavaScript, CSS and favicon come from the ``swagger-ui-bundle-v2`` wheel (pinned in
``uv.lock``) under ``/schema/ui/``, so the page works on a machine without internet and no
request leaves it. The document declares two ways in: ``OIDC`` (the authorization code flow
with PKCE against the tenant's identity provider; the development issuer in development)
and ``BearerAuth`` (paste an access token).
"""

from __future__ import annotations

import mimetypes
from pathlib import PurePath
from typing import Any

from litestar import Request, Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, OAuthFlow, OAuthFlows, Reference, SecurityScheme
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from app.core.settings import Settings

SCHEMA_PATH = "/schema"
# Versioned (the wheel's folder is "swagger-ui-<version>"): browsers may keep the files.
ASSETS_PATH = f"{SCHEMA_PATH}/ui/{PurePath(swagger_ui_path).name}"
# Not gzipped by the app: compressing the 1.4 MB bundle stalls the event loop (~0.1 s
# each time); it is cached by the browser instead.
UNCOMPRESSED_PATHS = [f"^{SCHEMA_PATH}/ui/"]
DEV_ISSUER_PATH = "/dev-issuer"  # served by app.dev.issuer; core imports no module
# Litestar's file responses guess media types; the first guess reads the system's
# mime.types files. Read them now (import time, before any loop runs), not on a request.
mimetypes.init()

SCOPES = {"openid": "Sign in with OpenID Connect", "profile": "Your name"}


class SignInSwagger(SwaggerRenderPlugin):
    """Swagger UI whose OAuth2 redirect page is on the origin the browser is on.

    Swagger derives the redirect from the page's path (``/schema`` would give
    ``/oauth2-redirect.html``, which does not exist), so the page is told the real one;
    the browser may use ``localhost`` or ``127.0.0.1``, hence per request.
    """

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        # Sync and without awaits: no other request can observe the per-request value.
        base = str(request.base_url).rstrip("/")
        self.oauth2_redirect_url = f"{base}{SCHEMA_PATH}/oauth2-redirect.html"
        return super().render(request, openapi_schema)


def oidc_scheme(settings: Settings) -> SecurityScheme | None:
    """How the UI signs in, or None when no identity provider is configured."""
    description = (
        "Sign in through the tenant's identity provider (authorization code flow with PKCE)"
        f" as the public client `{settings.oidc_web_client_id}`."
    )
    if settings.runs_dev_issuer:
        # Relative: Swagger resolves them against the page, so any host name works.
        flow = OAuthFlow(
            authorization_url=f"{DEV_ISSUER_PATH}/authorize",
            token_url=f"{DEV_ISSUER_PATH}/token",
            scopes=SCOPES,
        )
        return SecurityScheme(
            type="oauth2",
            flows=OAuthFlows(authorization_code=flow),
            description=description + " In development: the development issuer's picker.",
        )
    if settings.oidc_issuer:
        # The browser reads the endpoints from the issuer's discovery document itself, so
        # building the document never waits for the identity provider.
        return SecurityScheme(
            type="openIdConnect",
            open_id_connect_url=settings.oidc_issuer.rstrip("/")
            + "/.well-known/openid-configuration",
            description=description,
        )
    return None


def openapi_config(settings: Settings, version: str) -> OpenAPIConfig:
    """``/schema`` and ``/schema/swagger``: Swagger UI; ``/schema/openapi.json``: the document."""
    schemes: dict[str, SecurityScheme | Reference] = {
        "BearerAuth": SecurityScheme(
            type="http",
            scheme="bearer",
            bearer_format="JWT",
            description="An access token from the tenant's OpenID Connect provider"
            " (in development: `make token TENANT=demo ROLE=admin`).",
        )
    }
    security: list[dict[str, list[str]]] = [{"BearerAuth": []}]
    oidc = oidc_scheme(settings)
    if oidc is not None:
        schemes["OIDC"] = oidc
        security.append({"OIDC": []})
    plugin = SignInSwagger(
        path=["/", "/swagger"],
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
        init_oauth={
            "clientId": settings.oidc_web_client_id,
            "usePkceWithAuthorizationCodeGrant": True,
            "scopes": " ".join(SCOPES),
        },
    )
    return OpenAPIConfig(
        title="Pulse",
        version=version,
        description="Multi-tenant product analytics: imports, stats and alerts.",
        path=SCHEMA_PATH,
        render_plugins=[plugin],
        components=Components(security_schemes=schemes),
        security=security,
    )


def openapi_assets() -> Router:
    """Swagger UI's files from the pinned wheel (public, like everything under /schema)."""
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[swagger_ui_path],
        name="openapi-assets",
        opt={"public": True},
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=30 * 86400, public=True),
        # The wheel's path is absolute already; resolving it would touch the disk in
        # create_app (which tests call on a running loop).
        resolve_symlinks=False,
    )
