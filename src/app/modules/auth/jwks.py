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
import math
import time
from collections import OrderedDict
from collections.abc import Callable

import structlog

from app.modules.auth.errors import IdentityProviderUnavailable, InvalidToken
from app.modules.auth.key_sources import Clock, KeySource, cache_ttl
from app.modules.auth.keys import KTY_FOR_ALG, KeySet, VerificationKey

log = structlog.get_logger("app.auth.jwks")

NEGATIVE_CACHE_MAX = 1024


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
        if kid is None or kid in keys.by_kid or not KTY_FOR_ALG.get(alg):
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
