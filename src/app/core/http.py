"""The process's one outbound HTTP client (IdP discovery, JWKS, introspection, ...)."""

from __future__ import annotations

import httpx

from app.core.settings import Settings


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """Shared client: bounded pool, a timeout on every phase, no redirects to surprise us."""
    timeout = httpx.Timeout(settings.http_timeout_s, connect=min(5.0, settings.http_timeout_s))
    limits = httpx.Limits(
        max_connections=settings.http_max_connections,
        max_keepalive_connections=min(20, settings.http_max_connections),
    )
    return httpx.AsyncClient(
        timeout=timeout,
        limits=limits,
        follow_redirects=False,
        headers={"User-Agent": "pulse/0.1"},
    )
