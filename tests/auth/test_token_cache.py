"""The verified-token cache: exp, the 300 s bound, LRU size, key rotation, rejections."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from app.modules.auth.claims import ClaimMapping
from app.modules.auth.errors import InvalidToken
from app.modules.auth.jwks import JwksCache
from app.modules.auth.key_sources import HttpKeySource
from app.modules.auth.tokens import TOKEN_CACHE_TTL_S, TokenCache, TokenValidator
from tests.auth.conftest import Serve
from tests.fixtures.oidc import AUDIENCE, OidcIssuer


class Clock:
    """Wall-clock seconds that a test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def make_validator(
    issuer: OidcIssuer, http: httpx.AsyncClient, cache: TokenCache
) -> TokenValidator:
    keys = JwksCache(HttpKeySource(http, issuer.issuer, timeout_s=5), issuer=issuer.issuer)
    return TokenValidator(
        issuer=issuer.issuer,
        audience=AUDIENCE,
        algorithms=frozenset({"RS256", "ES256"}),
        leeway_s=0,
        strict_typ=False,
        keys=keys,
        mapping=ClaimMapping(),
        cache=cache,
    )


def validator_with(
    issuer: OidcIssuer, http: httpx.AsyncClient, *, size: int = 100
) -> tuple[TokenValidator, Clock]:
    clock = Clock()
    cache = TokenCache(size, clock=clock)
    return make_validator(issuer, http, cache), clock


async def test_a_verified_token_is_served_from_the_cache_until_its_exp(
    issuer: OidcIssuer, http: httpx.AsyncClient
) -> None:
    validator, clock = validator_with(issuer, http)
    exp = int(clock.now) + 120
    token = issuer.token(exp=exp)
    first = await validator.validate(token)
    assert len(validator.cache) == 1
    clock.now = exp - 1
    assert await validator.validate(token) is first
    assert validator.cache.hits == 1
    misses = validator.cache.misses
    clock.now = exp
    # Past exp by the cache's clock: not a hit (the full check runs again, on real time).
    await validator.validate(token)
    assert validator.cache.hits == 1
    assert validator.cache.misses == misses + 1


async def test_a_long_lived_token_is_remembered_for_at_most_300_seconds(
    issuer: OidcIssuer, http: httpx.AsyncClient
) -> None:
    validator, clock = validator_with(issuer, http)
    start = clock.now
    token = issuer.token(exp=int(start) + 3600)
    await validator.validate(token)
    clock.now = start + TOKEN_CACHE_TTL_S - 1
    await validator.validate(token)
    assert validator.cache.hits == 1
    clock.now = start + TOKEN_CACHE_TTL_S + 1
    await validator.validate(token)
    assert validator.cache.hits == 1


async def test_the_cache_is_bounded_and_evicts_the_least_recently_used(
    issuer: OidcIssuer, http: httpx.AsyncClient
) -> None:
    validator, _ = validator_with(issuer, http, size=2)
    one, two, three = (issuer.token(sub=f"user-{i}") for i in range(3))
    await validator.validate(one)
    await validator.validate(two)
    await validator.validate(one)  # one is now the most recently used
    assert validator.cache.hits == 1
    await validator.validate(three)  # evicts two
    assert len(validator.cache) == 2
    await validator.validate(one)
    assert validator.cache.hits == 2
    await validator.validate(two)  # verified again, not served from the cache
    assert validator.cache.hits == 2


async def test_a_token_signed_by_a_key_that_left_the_jwks_is_forgotten(
    issuer: OidcIssuer, http: httpx.AsyncClient
) -> None:
    validator, _ = validator_with(issuer, http)
    leaving = issuer.add_key("EC")
    staying = issuer.token(kid="rsa-1", sub="stays")
    rotated_out = issuer.token(kid=leaving, sub="leaves")
    await validator.validate(staying)
    await validator.validate(rotated_out)
    assert len(validator.cache) == 2
    issuer.unpublish(leaving)
    await validator.keys.refresh()
    assert len(validator.cache) == 1
    with pytest.raises(InvalidToken, match="unknown signing key"):
        await validator.validate(rotated_out)
    # A token of a key still published stays cached across the rotation.
    hits = validator.cache.hits
    await validator.validate(staying)
    assert validator.cache.hits == hits + 1


async def test_a_refresh_that_brings_the_same_keys_keeps_the_cache(
    issuer: OidcIssuer, http: httpx.AsyncClient
) -> None:
    validator, _ = validator_with(issuer, http)
    token = issuer.token()
    await validator.validate(token)
    generation = validator.keys.generation
    await validator.keys.refresh()
    assert validator.keys.generation == generation
    await validator.validate(token)
    assert validator.cache.hits == 1


async def test_a_rejected_token_is_never_cached(
    issuer: OidcIssuer, http: httpx.AsyncClient
) -> None:
    validator, _ = validator_with(issuer, http)
    rejected = [
        issuer.token(aud="another-api"),
        issuer.token(iss="https://evil.example"),
        issuer.token(exp=int(time.time()) - 60),
        issuer.token(nbf=int(time.time()) + 600),
        issuer.token(tenant_id=42),  # the tenant claim does not map
    ]
    good = issuer.token()
    head, payload, signature = good.split(".")
    rejected.append(f"{head}.{payload}.{signature[:-6]}AAAAAA")  # a tampered copy
    for _ in range(2):
        for token in rejected:
            with pytest.raises(InvalidToken):
                await validator.validate(token)
    assert len(validator.cache) == 0
    assert validator.cache.hits == 0
    await validator.validate(good)
    assert len(validator.cache) == 1


async def test_cache_size_setting_bounds_the_app_cache(serve: Serve, issuer: OidcIssuer) -> None:
    async with serve(oidc_token_cache_size=1) as (app, http):
        for sub in ("a", "b", "c"):
            token = issuer.token(sub=sub)
            response = await http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text
        assert len(app.state.auth.validator.cache) == 1
