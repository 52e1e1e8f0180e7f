"""JwksCache behaviour with a controllable clock and key source (no HTTP needed)."""

from __future__ import annotations

import asyncio

import pytest

from app.modules.auth.errors import IdentityProviderUnavailable, InvalidToken
from app.modules.auth.jwks import NEGATIVE_CACHE_MAX, JwksCache
from app.modules.auth.key_sources import cache_ttl
from app.modules.auth.keys import KeySet, parse_jwks
from tests.fixtures.notify import wait_until
from tests.fixtures.oidc import OidcIssuer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """A key source that counts calls, can fail, and can be held until released."""

    def __init__(self, keys: KeySet, ttl: float | None = None) -> None:
        self.keys = keys
        self.ttl = ttl
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def fetch(self) -> tuple[KeySet, float | None]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("idp down")
        return self.keys, self.ttl


@pytest.fixture
def keyset(oidc_issuer: OidcIssuer) -> KeySet:
    return parse_jwks({"keys": [oidc_issuer.keys["rsa-1"].jwk, oidc_issuer.keys["ec-1"].jwk]})


def test_parse_jwks_skips_unusable_keys(oidc_issuer: OidcIssuer) -> None:
    rsa = oidc_issuer.keys["rsa-1"].jwk
    keys = parse_jwks(
        {
            "keys": [
                rsa,
                {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
                {**oidc_issuer.keys["ec-1"].jwk, "use": "enc"},
                {**rsa, "kid": "private", "d": "AQAB"},
                {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
                "not a key",
            ]
        }
    )
    assert set(keys.by_kid) == {"rsa-1"}
    with pytest.raises(ValueError, match="keys"):
        parse_jwks({"nope": []})


def test_cache_control_is_honoured_within_bounds() -> None:
    bounds = {"default_s": 600.0, "min_s": 60.0, "max_s": 86_400.0}
    assert cache_ttl("public, max-age=120", **bounds) == 120
    assert cache_ttl("max-age=5", **bounds) == 60
    assert cache_ttl("max-age=99999999", **bounds) == 86_400
    assert cache_ttl("no-store", **bounds) == 60
    assert cache_ttl("no-cache, max-age=3600", **bounds) == 60
    assert cache_ttl(None, **bounds) == 600
    assert cache_ttl("private", **bounds) == 600


async def test_cold_requests_share_one_fetch(keyset: KeySet) -> None:
    source = Source(keyset)
    source.gate = asyncio.Event()
    cache = JwksCache(source, issuer="i")
    waiters = [asyncio.create_task(cache.key_for("rsa-1", "RS256")) for _ in range(50)]
    await wait_until(lambda: source.calls == 1)
    source.gate.set()
    keys = await asyncio.gather(*waiters)
    assert {k.kid for k in keys} == {"rsa-1"}
    assert source.calls == 1


async def test_unknown_kid_refresh_then_cooldown(keyset: KeySet) -> None:
    clock = Clock()
    source = Source(keyset)
    cache = JwksCache(source, issuer="i", cooldown_s=30, clock=clock)
    await cache.refresh()
    assert source.calls == 1
    with pytest.raises(InvalidToken):
        await cache.key_for("new-1", "RS256")
    assert source.calls == 2  # the first unknown kid refreshes
    for i in range(100):
        with pytest.raises(InvalidToken):
            await cache.key_for(f"random-{i}", "RS256")
    assert source.calls == 2  # cooldown: no more fetches
    clock.now += 31
    with pytest.raises(InvalidToken):
        await cache.key_for("another", "RS256")
    assert source.calls == 3  # cooldown over: one more refresh
    with pytest.raises(InvalidToken):
        await cache.key_for("new-1", "RS256")
    assert source.calls == 3  # and a new cooldown


async def test_negative_cache_is_bounded(keyset: KeySet) -> None:
    clock = Clock()
    cache = JwksCache(Source(keyset), issuer="i", clock=clock)
    await cache.refresh()
    for i in range(NEGATIVE_CACHE_MAX * 3):
        with pytest.raises(InvalidToken):
            await cache.key_for(f"kid-{i}", "RS256")
    assert len(cache._unknown) <= NEGATIVE_CACHE_MAX


async def test_last_good_keys_are_kept_for_a_bounded_time(keyset: KeySet) -> None:
    clock = Clock()
    source = Source(keyset)
    cache = JwksCache(source, issuer="i", clock=clock, max_stale_s=3600, failure_backoff_s=2)
    await cache.refresh()
    source.fail = True
    clock.now += 3000  # well past the JWKS lifetime, IdP down
    with pytest.raises(IdentityProviderUnavailable):
        await cache.refresh()
    assert (await cache.key_for("rsa-1", "RS256")).kid == "rsa-1"
    clock.now += 700  # beyond max_stale since the last good fetch
    with pytest.raises(IdentityProviderUnavailable):
        await cache.key_for("rsa-1", "RS256")
    calls = source.calls
    with pytest.raises(IdentityProviderUnavailable):
        await cache.key_for("rsa-1", "RS256")  # within the failure backoff: no new fetch
    assert source.calls == calls
    source.fail = False
    clock.now += 3
    assert (await cache.key_for("rsa-1", "RS256")).kid == "rsa-1"


async def test_background_refresh_runs_before_expiry(keyset: KeySet) -> None:
    source = Source(keyset, ttl=0.1)
    cache = JwksCache(source, issuer="i", min_ttl_s=0.1, failure_backoff_s=0.05)
    task = asyncio.create_task(cache.run())
    try:
        await wait_until(lambda: source.calls >= 3, timeout_s=5)
        assert cache.keys is not None
        source.fail = True
        calls = source.calls
        await wait_until(lambda: source.calls >= calls + 2, timeout_s=5)  # retries with backoff
        assert cache.keys is not None  # still the last good keys
        source.fail = False
        await wait_until(lambda: cache._failures == 0, timeout_s=5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_key_without_kid_only_when_unambiguous(
    keyset: KeySet, oidc_issuer: OidcIssuer
) -> None:
    cache = JwksCache(Source(keyset), issuer="i")
    await cache.refresh()
    assert (await cache.key_for(None, "ES256")).kid == "ec-1"
    with pytest.raises(InvalidToken):
        await cache.key_for("rsa-1", "ES256")  # known kid, wrong key type: no refresh either
