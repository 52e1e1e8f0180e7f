"""Opaque access tokens: RFC 7662 introspection with a cache and single flight.

Active results are cached until the earlier of their ``exp`` and the configured TTL,
inactive results briefly, failures never. Concurrent requests with the same token share
one call. Cache keys are SHA-256 digests, so tokens are not kept in memory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from app.modules.auth.claims import ClaimMapping, ClaimsError
from app.modules.auth.errors import IdentityProviderUnavailable, InvalidToken
from app.modules.auth.principal import Principal

log = structlog.get_logger("app.auth.introspection")

INACTIVE_TTL_S = 10.0
CACHE_MAX_ENTRIES = 50_000


@dataclass(frozen=True)
class _Entry:
    expires_at: float  # monotonic
    principal: Principal | None  # None: inactive


class Introspector:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        url: str,
        client_id: str,
        client_secret: str,
        mapping: ClaimMapping,
        audience: str,
        issuer: str | None,
        cache_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.http = http
        self.url = url
        # client_secret_basic: each part form-urlencoded before base64 (RFC 6749 2.3.1).
        credentials = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
        self._authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
        self.mapping = mapping
        self.audience = audience
        self.issuer = issuer
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.wall_clock = wall_clock
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Task[Principal | None]] = {}
        self.calls = 0

    async def principal(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).digest()
        entry = self._cache.get(digest)
        if entry is not None and entry.expires_at > self.clock():
            return self._result(entry.principal)
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._introspect(token, digest), name="oidc-introspect"
            )
            self._inflight[digest] = task
            task.add_done_callback(lambda t: self._done(digest, t))
        return self._result(await asyncio.shield(task))

    def _done(self, digest: bytes, task: asyncio.Task[Principal | None]) -> None:
        self._inflight.pop(digest, None)
        if not task.cancelled():
            task.exception()

    @staticmethod
    def _result(principal: Principal | None) -> Principal:
        if principal is None:
            raise InvalidToken("the token is not active", reason="inactive")
        return principal

    async def _introspect(self, token: str, digest: bytes) -> Principal | None:
        self.calls += 1
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                response = await self.http.post(
                    self.url,
                    data={"token": token, "token_type_hint": "access_token"},
                    headers={"Authorization": self._authorization, "Accept": "application/json"},
                    timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 5.0)),
                )
            if response.status_code != 200:
                raise ValueError(f"introspection answered {response.status_code}")
            body = response.json()
            if not isinstance(body, dict):
                raise ValueError("introspection answer is not a JSON object")
        except (httpx.HTTPError, TimeoutError, ValueError) as exc:
            log.warning("oidc.introspection_failed", error=f"{type(exc).__name__}: {exc}")
            raise IdentityProviderUnavailable(str(exc)) from exc
        principal, ttl = self._interpret(body)
        self._store(digest, principal, ttl)
        return principal

    def _interpret(self, body: dict[str, Any]) -> tuple[Principal | None, float]:
        inactive = (None, min(INACTIVE_TTL_S, self.cache_s))
        if body.get("active") is not True:
            return inactive
        now = self.wall_clock()
        exp = body.get("exp")
        if isinstance(exp, int | float) and exp <= now:
            return inactive
        aud = body.get("aud")
        if aud is not None:
            audiences = [aud] if isinstance(aud, str) else aud
            if not isinstance(audiences, list) or self.audience not in audiences:
                return inactive
        if self.issuer is not None and body.get("iss") not in (None, self.issuer):
            return inactive
        if not body.get("sub") and isinstance(body.get("client_id"), str):
            # RFC 7662 makes sub optional; a client-credentials token is its client.
            body = {**body, "sub": body["client_id"]}
        try:
            principal = self.mapping.principal(body)
        except ClaimsError:
            return inactive
        ttl = self.cache_s
        if isinstance(exp, int | float):
            ttl = min(ttl, exp - now)
        return principal, ttl

    def _store(self, digest: bytes, principal: Principal | None, ttl: float) -> None:
        self._cache[digest] = _Entry(self.clock() + ttl, principal)
        self._cache.move_to_end(digest)
        while len(self._cache) > CACHE_MAX_ENTRIES:
            self._cache.popitem(last=False)

    async def close(self) -> None:
        tasks = [t for t in self._inflight.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
