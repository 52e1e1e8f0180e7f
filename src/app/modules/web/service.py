"""Where the browser signs in: the issuer's endpoints, and the CSP that allows them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import structlog

from app.core.errors import Unavailable
from app.core.settings import Settings
from app.modules.web.schemas import SignInConfig

log = structlog.get_logger("app.web")

DISCOVERY_TTL_S = 3600.0
DISCOVERY_TIMEOUT_S = 5.0
DEV_ISSUER_PATH = "/dev-issuer"
SCOPE = "openid profile"


@dataclass
class DiscoveryCache:
    """The real issuer's discovery document, fetched on first use and kept for an hour."""

    document: dict[str, Any] | None = None
    fetched_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, http: httpx.AsyncClient, issuer: str) -> dict[str, Any]:
        if self.document is not None and time.monotonic() - self.fetched_at < DISCOVERY_TTL_S:
            return self.document
        async with self.lock:
            if self.document is not None and time.monotonic() - self.fetched_at < DISCOVERY_TTL_S:
                return self.document
            url = issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                async with asyncio.timeout(DISCOVERY_TIMEOUT_S):
                    response = await http.get(url)
                response.raise_for_status()
                document = msgspec.json.decode(response.content, type=dict[str, Any])
            except (httpx.HTTPError, TimeoutError, msgspec.DecodeError) as exc:
                log.warning("web.discovery_failed", issuer=issuer, error=str(exc))
                if self.document is not None:
                    return self.document  # stale beats nothing
                raise Unavailable("The identity provider cannot be reached.") from None
            self.document = document
            self.fetched_at = time.monotonic()
            return document


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def sign_in_config(settings: Settings, state: Any, base_url: str) -> SignInConfig | None:
    """The endpoints the browser uses, or None when no issuer is configured at all.

    The development issuer is addressed through the origin the browser is on, so that
    opening Pulse as ``localhost`` or ``127.0.0.1`` both work without CORS.
    """
    client_id = settings.oidc_web_client_id
    base = base_url.rstrip("/")
    if getattr(state, "dev_issuer", None) is not None and not settings.oidc_issuer:
        prefix = base + DEV_ISSUER_PATH
        return SignInConfig(
            issuer=state.dev_issuer.issuer,
            client_id=client_id,
            authorization_endpoint=prefix + "/authorize",
            token_endpoint=prefix + "/token",
            end_session_endpoint=prefix + "/logout",
            scope=SCOPE,
            development=True,
        )
    if not settings.oidc_issuer:
        return None
    cache: DiscoveryCache | None = getattr(state, "web_discovery", None)
    if cache is None:
        cache = DiscoveryCache()
        state.web_discovery = cache
    document = await cache.get(state.http, settings.oidc_issuer)
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
