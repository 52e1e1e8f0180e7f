"""Signing keys of the issuer: discovery, JWKS fetch, and the per-issuer key cache.

One :class:`JwksCache` per issuer per app (a process runs one app). It

- honours ``Cache-Control: max-age`` clamped to ``[min_ttl_s, max_ttl_s]`` and is refreshed
  by an owned background task before it expires (the first run is the start-up prefetch,
  so an IdP that is down at start-up does not stop Pulse from starting);
- on an unknown ``kid`` runs one refresh shared by every waiting request (single flight),
  then refuses further unknown-``kid`` refreshes for ``cooldown_s`` and remembers the
  rejected ``kid``s in a bounded negative cache: a flood of random ``kid``s costs at most
  one JWKS fetch per cooldown;
- keeps the last good keys for ``max_stale_s`` after their last successful fetch when the
  IdP is unreachable; with nothing usable cached it raises
  :class:`IdentityProviderUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import jwt
import structlog

from app.modules.auth.errors import IdentityProviderUnavailable, InvalidToken

log = structlog.get_logger("app.auth.jwks")

Clock = Callable[[], float]

# Which key a JWS algorithm may be verified with (RFC 7518 section 3; RFC 8037).
_KTY_FOR_ALG: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)
NEGATIVE_CACHE_MAX = 1024
# Discovery documents and key sets are a few KiB; a broken IdP must not fill our memory.
MAX_DOCUMENT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class VerificationKey:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any  # a cryptography public key object
    # SHA-256 of the kid and the public key's members: the same key, whatever object holds it.
    fingerprint: str = ""

    def accepts(self, alg: str) -> bool:
        """The key's type (and curve) fits ``alg``, and its own ``alg``, if any, is ``alg``."""
        wanted = _KTY_FOR_ALG.get(alg)
        if wanted is None:
            return False
        kty, crv = wanted
        if self.kty != kty or (crv is not None and self.crv != crv):
            return False
        return self.alg is None or self.alg == alg


@dataclass(frozen=True)
class KeySet:
    by_kid: Mapping[str, VerificationKey] = field(default_factory=dict)
    without_kid: tuple[VerificationKey, ...] = ()

    def __len__(self) -> int:
        return len(self.by_kid) + len(self.without_kid)

    @functools.cached_property
    def fingerprints(self) -> frozenset[str]:
        """The keys' fingerprints: two key sets with the same ones verify the same tokens."""
        return frozenset(k.fingerprint for k in (*self.by_kid.values(), *self.without_kid))

    def find(self, kid: str | None, alg: str) -> VerificationKey | None:
        if kid is not None:
            key = self.by_kid.get(kid)
            return key if key is not None and key.accepts(alg) else None
        # No kid in the header: only unambiguous when exactly one key fits.
        candidates = [k for k in (*self.by_kid.values(), *self.without_kid) if k.accepts(alg)]
        return candidates[0] if len(candidates) == 1 else None


def parse_jwks(document: Any) -> KeySet:
    """Public signing keys from a JWKS document; anything unusable is skipped and logged."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("JWKS document has no 'keys' list")
    by_kid: dict[str, VerificationKey] = {}
    without_kid: list[VerificationKey] = []
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            continue
        kty = jwk.get("kty")
        if kty not in {"RSA", "EC", "OKP"}:  # "oct" (shared secrets) never verifies a token
            continue
        if jwk.get("use", "sig") != "sig" or "d" in jwk:  # encryption keys; leaked private keys
            continue
        alg = jwk.get("alg")
        if alg is not None and alg not in _KTY_FOR_ALG:
            continue
        try:
            parsed = jwt.PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.warning("oidc.jwk_skipped", kid=jwk.get("kid"), error=str(exc))
            continue
        kid = jwk.get("kid")
        key = VerificationKey(
            kid=kid if isinstance(kid, str) else None,
            kty=str(kty),
            crv=jwk.get("crv") if isinstance(jwk.get("crv"), str) else None,
            alg=alg,
            key=parsed.key,
            fingerprint=key_fingerprint(jwk),
        )
        if key.kid is None:
            without_kid.append(key)
        else:
            by_kid[key.kid] = key
    return KeySet(by_kid, tuple(without_kid))


_PUBLIC_MEMBERS = ("kid", "kty", "crv", "alg", "n", "e", "x", "y")


def key_fingerprint(jwk: Mapping[str, Any]) -> str:
    """A digest of the JWK's id and public members (RFC 7638-like, with kid and alg)."""
    members = {k: jwk[k] for k in _PUBLIC_MEMBERS if isinstance(jwk.get(k), str)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


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


class JwksCache:
    """The issuer's signing keys for this process. See the module docstring."""

    def __init__(
        self,
        source: KeySource,
        *,
        issuer: str,
        cooldown_s: float = 30.0,
        max_stale_s: float = 86_400.0,
        default_ttl_s: float = 600.0,
        min_ttl_s: float = 60.0,
        max_ttl_s: float = 86_400.0,
        failure_backoff_s: float = 2.0,
        clock: Clock = time.monotonic,
        on_fetch: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.issuer = issuer
        self.cooldown_s = cooldown_s
        self.max_stale_s = max_stale_s
        self.default_ttl_s = default_ttl_s
        self.min_ttl_s = min_ttl_s
        self.max_ttl_s = max_ttl_s
        self.failure_backoff_s = failure_backoff_s
        self.clock = clock
        self.on_fetch = on_fetch
        self._keys: KeySet | None = None
        self._fetched_at = -math.inf
        self._expires_at = -math.inf
        self._failed_at = -math.inf
        self._failures = 0
        self._last_forced = -math.inf
        self._inflight: asyncio.Task[KeySet] | None = None
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._changed = asyncio.Event()
        # Bumped when a fetch brings a different set of keys (not on every refresh).
        self.generation = 0
        self._key_listeners: list[Callable[[KeySet], None]] = []

    # --- state -------------------------------------------------------------
    @property
    def keys(self) -> KeySet | None:
        return self._usable(self.clock())

    def _usable(self, now: float) -> KeySet | None:
        if self._keys is None or now - self._fetched_at > self.max_stale_s:
            return None
        return self._keys

    @property
    def fetching(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    @property
    def expires_in(self) -> float:
        return self._expires_at - self.clock()

    def on_keys_changed(self, listener: Callable[[KeySet], None]) -> None:
        """Call ``listener(new_keys)`` whenever a fetch changes the set of keys (the token
        cache forgets what keys that left verified)."""
        self._key_listeners.append(listener)

    # --- lookups -----------------------------------------------------------
    async def key_for(self, kid: str | None, alg: str) -> VerificationKey:
        """The key that verifies a token with this ``kid``/``alg``, or InvalidToken/503."""
        now = self.clock()
        keys = self._usable(now)
        if keys is None:
            keys = await self._cold_load(now)
        found = keys.find(kid, alg)
        if found is not None:
            return found
        if kid is None or kid in keys.by_kid or not _KTY_FOR_ALG.get(alg):
            # A known kid whose key type or alg does not fit is an attack, not a rotation.
            raise InvalidToken("no signing key fits the token", reason="no_key")
        return await self._unknown_kid(kid, alg, now)

    async def _cold_load(self, now: float) -> KeySet:
        # Nothing usable: try (single flight), but not on every request while the IdP is down.
        if not self.fetching and now - self._failed_at < self.failure_backoff_s:
            raise IdentityProviderUnavailable("recent JWKS fetch failed")
        await self.refresh()
        keys = self._usable(self.clock())
        if keys is None:
            raise IdentityProviderUnavailable("no signing keys")
        return keys

    async def _unknown_kid(self, kid: str, alg: str, now: float) -> VerificationKey:
        seen_until = self._unknown.get(kid)
        if seen_until is not None and seen_until > now:
            raise InvalidToken("unknown signing key", reason="unknown_kid")
        if not self.fetching:
            if now - self._last_forced < self.cooldown_s:
                self._remember_unknown(kid, now)
                raise InvalidToken("unknown signing key", reason="unknown_kid")
            self._last_forced = now
            log.info("oidc.unknown_kid_refresh", issuer=self.issuer, kid=kid[:64])
        try:
            keys = await self.refresh()
        except IdentityProviderUnavailable:
            keys = self._usable(self.clock()) or KeySet()
        found = keys.find(kid, alg)
        if found is None:
            self._remember_unknown(kid, now)
            raise InvalidToken("unknown signing key", reason="unknown_kid")
        return found

    def _remember_unknown(self, kid: str, now: float) -> None:
        self._unknown[kid[:256]] = now + self.cooldown_s
        self._unknown.move_to_end(kid[:256])
        while len(self._unknown) > NEGATIVE_CACHE_MAX:
            self._unknown.popitem(last=False)

    # --- refresh -----------------------------------------------------------
    async def refresh(self) -> KeySet:
        """Fetch the keys now, sharing a fetch already in flight. Raises 503-error on failure."""
        if self._inflight is None or self._inflight.done():
            task = asyncio.get_running_loop().create_task(
                self._fetch(), name=f"oidc-jwks-fetch:{self.issuer}"
            )
            task.add_done_callback(self._flight_done)
            self._inflight = task
        # shield: a caller that gives up (client went away) must not cancel the others' fetch.
        return await asyncio.shield(self._inflight)

    def _flight_done(self, task: asyncio.Task[KeySet]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: the awaiting requests have seen it

    async def _fetch(self) -> KeySet:
        started = self.clock()
        try:
            keys, ttl = await self.source.fetch()
            if not len(keys):
                raise ValueError("the JWKS holds no usable signing key")
        except Exception as exc:
            self._failed_at = self.clock()
            self._failures += 1
            if self.on_fetch:
                self.on_fetch("error")
            log.warning(
                "oidc.jwks_fetch_failed",
                issuer=self.issuer,
                error=f"{type(exc).__name__}: {exc}",
                have_keys=self._usable(self._failed_at) is not None,
            )
            raise IdentityProviderUnavailable(str(exc)) from exc
        now = self.clock()
        if ttl is None:
            cache_control = getattr(self.source, "cache_control", None)
            ttl = cache_ttl(
                cache_control,
                default_s=self.default_ttl_s,
                min_s=self.min_ttl_s,
                max_s=self.max_ttl_s,
            )
        else:
            ttl = min(max(ttl, self.min_ttl_s), self.max_ttl_s)
        changed = self._keys is None or self._keys.fingerprints != keys.fingerprints
        self._keys = keys
        if changed:
            self.generation += 1
            for listener in self._key_listeners:
                listener(keys)
        self._fetched_at = now
        self._expires_at = now + ttl
        self._failures = 0
        self._changed.set()
        self._changed = asyncio.Event()
        if self.on_fetch:
            self.on_fetch("ok")
        log.info(
            "oidc.jwks_fetched",
            issuer=self.issuer,
            keys=len(keys),
            ttl_s=round(ttl, 1),
            ms=round((now - started) * 1000, 1),
        )
        return keys

    def next_refresh_in(self) -> float:
        """Seconds until the background task should refresh."""
        now = self.clock()
        if self._failures:
            # Back off 1, 2, 4 ... s, at most a minute while we have nothing, 5 min otherwise.
            cap = 60.0 if self._usable(now) is None else 300.0
            backoff = min(cap, self.failure_backoff_s * 2.0 ** min(self._failures - 1, 10))
            return max(0.0, self._failed_at + backoff - now)
        if self._keys is None:
            return 0.0
        # Refresh when 80% of the lifetime has passed, so requests never wait on expiry.
        lifetime = self._expires_at - self._fetched_at
        return max(0.0, self._fetched_at + 0.8 * lifetime - now)

    async def run(self) -> None:
        """Background task: prefetch now, then refresh before expiry, backing off on failure."""
        while True:
            delay = self.next_refresh_in()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await self.refresh()
            except IdentityProviderUnavailable:
                pass  # logged in _fetch; next_refresh_in backs off
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("oidc.jwks_refresh_crashed", issuer=self.issuer)
                self._failures += 1
                self._failed_at = self.clock()

    async def wait_for_keys(self, timeout_s: float) -> bool:
        """Wait (bounded) until a key set is loaded; True if one is."""
        deadline = self.clock() + timeout_s
        while self.keys is None:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return self.keys is not None
        return True

    async def close(self) -> None:
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
