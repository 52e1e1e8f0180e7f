"""Pages of the dashboard (one shell for every view), its sign-in settings and static files.

Public in the auth sense: a page carries no data and no token; the JavaScript calls the
JSON API with the access token it got from the issuer.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.params import FromPath

from app.core.errors import NotFound, Unavailable, error_responses
from app.core.settings import Settings
from app.modules.web.assets import Asset
from app.modules.web.page import SHELL
from app.modules.web.schemas import SignInConfig
from app.modules.web.service import IssuerSources, content_security_policy, sign_in_config

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


async def _shell(
    request: Request[Any, Any, Any], settings: Settings, sources: IssuerSources
) -> Response[str]:
    try:
        config = await sign_in_config(settings, sources, str(request.base_url))
    except Unavailable:
        # The page still loads; the script asks /web/config and shows the reason.
        config = None
    headers = {
        **SECURITY_HEADERS,
        "Content-Security-Policy": content_security_policy(config),
        "Cache-Control": "no-cache",
    }
    return Response(SHELL, media_type="text/html", headers=headers)


class WebController(Controller):
    """The dashboard's pages. Every path serves the same shell; the script routes."""

    tags = ["web"]
    opt = {"public": True}
    include_in_schema = False

    @get(
        ["/", "/imports", "/auth/callback", "/signed-out"],
        operation_id="webPage",
        summary="The dashboard (HTML)",
        responses=error_responses(503),
    )
    async def page(
        self,
        request: Request[Any, Any, Any],
        settings: NamedDependency[Settings],
        issuer_sources: NamedDependency[IssuerSources],
    ) -> Response[str]:
        return await _shell(request, settings, issuer_sources)

    @get(
        "/web/config",
        operation_id="webSignInConfig",
        summary="Where the dashboard signs in: issuer endpoints and the public client id",
        responses=error_responses(404, 503),
        cache_control=CacheControlHeader(no_store=True),
    )
    async def config(
        self,
        request: Request[Any, Any, Any],
        settings: NamedDependency[Settings],
        issuer_sources: NamedDependency[IssuerSources],
    ) -> SignInConfig:
        config = await sign_in_config(settings, issuer_sources, str(request.base_url))
        if config is None:
            raise NotFound("No identity provider is configured (set PULSE_OIDC_ISSUER).")
        return config


class StaticController(Controller):
    """``/static/<name>``: the dashboard's scripts, styles and icons (from memory)."""

    path = "/static"
    tags = ["web"]
    opt = {"public": True}
    include_in_schema = False

    @get(
        "/{file_name:str}",
        operation_id="webStatic",
        summary="A static file of the dashboard",
        responses=error_responses(404),
    )
    async def asset(
        self,
        request: Request[Any, Any, Any],
        web_assets: NamedDependency[dict[str, Asset]],
        file_name: FromPath[str],
    ) -> Response[bytes]:
        found = web_assets.get(file_name)
        if found is None:
            raise NotFound(f"No static file {file_name!r}.")
        headers = {
            **SECURITY_HEADERS,
            "ETag": found.etag,
            # Revalidated on every use (a 304 thanks to the ETag): the modules import each
            # other by plain URLs, so a cached old one must never meet a new page.
            "Cache-Control": "no-cache",
        }
        if request.headers.get("if-none-match") == found.etag:
            return Response(b"", status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)
