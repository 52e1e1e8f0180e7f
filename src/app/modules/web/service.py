"""Where the browser signs in: the issuer's endpoints, and the CSP that allows them."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import structlog

from app.core.errors import Unavailable
from app.core.openapi import DEV_ISSUER_PATH
from app.core.settings import Settings
from app.modules.auth import OidcDiscovery
from app.modules.web.schemas import SignInConfig

log = structlog.get_logger("app.web")

SCOPE = "openid profile"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class IssuerSources:
    development_issuer: str | None  # the in-process development issuer's URL, if it runs
    discovery: OidcDiscovery | None  # the configured issuer's discovery document (auth)


async def sign_in_config(
    settings: Settings, sources: IssuerSources, base_url: str
) -> SignInConfig | None:
    """The endpoints the browser uses, or None when no issuer is configured at all.

    The development issuer is addressed through the origin the browser is on, so that
    opening Pulse as ``localhost`` or ``127.0.0.1`` both work without CORS.
    """
    client_id = settings.oidc_web_client_id
    base = base_url.rstrip("/")
    if sources.development_issuer is not None and not settings.oidc_issuer:
        prefix = base + DEV_ISSUER_PATH
        return SignInConfig(
            issuer=sources.development_issuer,
            client_id=client_id,
            authorization_endpoint=prefix + "/authorize",
            token_endpoint=prefix + "/token",
            end_session_endpoint=prefix + "/logout",
            scope=SCOPE,
            development=True,
        )
    if not settings.oidc_issuer:
        return None
    discovery = sources.discovery
    if discovery is None:
        raise Unavailable("The identity provider cannot be reached.")
    try:
        # The auth module's copy: fetched once (with its key cache), kept for an hour.
        document = await discovery.document()
    except (httpx.HTTPError, TimeoutError, ValueError):
        raise Unavailable("The identity provider cannot be reached.") from None
    authorize = document.get("authorization_endpoint")
    token = document.get("token_endpoint")
    if not isinstance(authorize, str) or not isinstance(token, str):
        raise Unavailable("The identity provider does not offer the authorization code flow.")
    end_session = document.get("end_session_endpoint")
    return SignInConfig(
        issuer=settings.oidc_issuer,
        client_id=client_id,
        authorization_endpoint=authorize,
        token_endpoint=token,
        end_session_endpoint=end_session if isinstance(end_session, str) else None,
        scope=SCOPE,
        development=False,
    )


def content_security_policy(config: SignInConfig | None) -> str:
    """Scripts, styles and data from Pulse itself; the token call may go to the IdP."""
    connect = ["'self'"]
    if config is not None:
        token_origin = _origin(config.token_endpoint)
        if token_origin not in connect:
            connect.append(token_origin)
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src " + " ".join(connect),
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "manifest-src 'self'",
        ]
    )
