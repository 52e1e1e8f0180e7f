"""Where the issuer's keys come from: OIDC discovery and the JWKS over HTTP (bounded,
with ``Cache-Control``), or a key set known in-process (the development issuer)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx
import structlog

from app.modules.auth.keys import KeySet, parse_jwks

log = structlog.get_logger("app.auth.jwks")

Clock = Callable[[], float]

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)
# Discovery documents and key sets are a few KiB; a broken IdP must not fill our memory.
MAX_DOCUMENT_BYTES = 1024 * 1024


def cache_ttl(cache_control: str | None, *, default_s: float, min_s: float, max_s: float) -> float:
    """Seconds to keep a JWKS: ``max-age`` within bounds; ``no-store``/``no-cache`` -> min."""
    if cache_control:
        lowered = cache_control.lower()
        if "no-store" in lowered or "no-cache" in lowered:
            return min_s
        match = _MAX_AGE.search(cache_control)
        if match:
            return min(max(float(match.group(1)), min_s), max_s)
    return min(max(default_s, min_s), max_s)


class KeySource(Protocol):
    async def fetch(self) -> tuple[KeySet, float | None]:
        """The current key set and how long it may be cached (None: the default)."""
        ...


class StaticKeySource:
    """Keys known in-process (the development issuer): same cache, same validation path."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys

    async def fetch(self) -> tuple[KeySet, float | None]:
        return self.keys, None


DISCOVERY_TTL_S = 3600.0


class OidcDiscovery:
    """The issuer's discovery document (OpenID Connect Discovery 1.0), fetched for the key
    cache (``jwks_uri``) and kept for the web sign-in page (its endpoints): one fetch
    serves both, so the issuer is asked once an hour, not once per reader."""

    def __init__(
        self,
        issuer: str,
        get_json: Callable[[str], Awaitable[Any]],
        *,
        ttl_s: float = DISCOVERY_TTL_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self._get_json = get_json
        self.ttl_s = ttl_s
        self.clock = clock
        self._document: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def fetch(self) -> dict[str, Any]:
        """Fetch and check the document now (the key cache re-discovers after a failure)."""
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url)
        if not isinstance(document, dict):
            raise ValueError("discovery document is not a JSON object")
        # OIDC Discovery 4.3: the document's issuer must be exactly the configured one.
        if document.get("issuer") != self.issuer:
            raise ValueError(f"discovery issuer {document.get('issuer')!r} is not {self.issuer!r}")
        self._document = document
        self._fetched_at = self.clock()
        return document

    def _fresh(self) -> dict[str, Any] | None:
        if self._document is not None and self.clock() - self._fetched_at < self.ttl_s:
            return self._document
        return None

    async def document(self) -> dict[str, Any]:
        """The document, fetched at most once per ``ttl_s`` (single flight). When the issuer
        cannot be reached the last good document is returned; with none, the error is
        raised (``httpx.HTTPError``, ``TimeoutError`` or ``ValueError``)."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        async with self._lock:
            fresh = self._fresh()
            if fresh is not None:
                return fresh
            try:
                return await self.fetch()
            except (httpx.HTTPError, TimeoutError, ValueError) as exc:
                log.warning("oidc.discovery_failed", issuer=self.issuer, error=str(exc))
                if self._document is not None:
                    return self._document  # stale beats nothing
                raise


class HttpKeySource:
    """OpenID Connect discovery, then the JWKS, with the app's shared HTTP client."""

    def __init__(self, http: httpx.AsyncClient, issuer: str, *, timeout_s: float) -> None:
        self.http = http
        self.issuer = issuer
        self.timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
        self.timeout_s = timeout_s
        self.jwks_uri: str | None = None
        self.cache_control: str | None = None
        self.discovery = OidcDiscovery(issuer, self._get_document)

    async def discover(self) -> str:
        document = await self.discovery.fetch()
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ValueError("discovery document has no usable jwks_uri")
        return jwks_uri

    async def fetch(self) -> tuple[KeySet, float | None]:
        if self.jwks_uri is None:
            self.jwks_uri = await self.discover()
        try:
            document, self.cache_control = await self._get_json(self.jwks_uri)
        except Exception:
            self.jwks_uri = None  # discover again next time: the IdP may have moved its JWKS
            raise
        return parse_jwks(document), None

    async def _get_document(self, url: str) -> Any:
        document, _ = await self._get_json(url)
        return document

    async def _get_json(self, url: str) -> tuple[Any, str | None]:
        """The JSON at ``url`` and its ``Cache-Control`` header."""
        # httpx's timeout bounds each phase; asyncio.timeout bounds the whole exchange.
        body = bytearray()
        async with (
            asyncio.timeout(self.timeout_s * 2),
            self.http.stream(
                "GET", url, timeout=self.timeout, headers={"Accept": "application/json"}
            ) as response,
        ):
            if response.status_code != 200:
                raise ValueError(f"GET {url} answered {response.status_code}")
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError(f"GET {url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
            cache_control = response.headers.get("cache-control")
        return json.loads(body), cache_control
