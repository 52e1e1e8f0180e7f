"""Signing keys from the loopback issuer: prefetch, rotation, kid floods, outages."""

from __future__ import annotations

import asyncio
import socket
import uuid

import httpx
import jwt

from tests.auth.conftest import Serve
from tests.fixtures.notify import wait_until
from tests.fixtures.oidc import OidcIssuer

ME = "/api/v1/me"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_keys_are_prefetched_at_startup(serve: Serve, issuer: OidcIssuer) -> None:
    async with serve() as (app, _):
        assert await app.state.auth.keys.wait_for_keys(5)
        assert issuer.jwks_fetches == 1
        assert issuer.discovery_fetches == 1


async def test_new_key_is_accepted_at_once(serve: Serve, issuer: OidcIssuer) -> None:
    async with serve() as (app, http):
        assert await app.state.auth.keys.wait_for_keys(5)
        kid = issuer.add_key("EC")
        response = await http.get(ME, headers=bearer(issuer.token(kid=kid)))
        assert response.status_code == 200, response.text
        assert issuer.jwks_fetches == 2


async def test_removed_key_fails_after_refresh(serve: Serve, issuer: OidcIssuer) -> None:
    async with serve() as (app, http):
        assert await app.state.auth.keys.wait_for_keys(5)
        old = issuer.token(kid="rsa-1")
        assert (await http.get(ME, headers=bearer(old))).status_code == 200
        new_kid = issuer.add_key("RSA")
        issuer.unpublish("rsa-1")
        await app.state.auth.keys.refresh()
        response = await http.get(ME, headers=bearer(old))
        assert response.status_code == 401
        assert 'error_description="unknown signing key"' in response.headers["www-authenticate"]
        assert (await http.get(ME, headers=bearer(issuer.token(kid=new_kid)))).status_code == 200


async def test_unknown_kid_flood_fetches_jwks_once_per_cooldown(
    serve: Serve, issuer: OidcIssuer
) -> None:
    signer = issuer.add_key("EC", publish=False)
    key = issuer.keys[signer].private
    claims = issuer.claims()
    tokens = [
        jwt.encode(claims, key, algorithm="ES256", headers={"kid": uuid.uuid4().hex})
        for _ in range(1000)
    ]
    async with serve() as (app, http):
        assert await app.state.auth.keys.wait_for_keys(5)
        before = issuer.jwks_fetches
        statuses: list[int] = []
        for start in range(0, 500, 100):  # concurrent bursts
            batch = tokens[start : start + 100]
            responses = await asyncio.gather(*(http.get(ME, headers=bearer(t)) for t in batch))
            statuses += [r.status_code for r in responses]
        for token in tokens[500:]:  # and one after another
            statuses.append((await http.get(ME, headers=bearer(token))).status_code)
        assert set(statuses) == {401}
        assert issuer.jwks_fetches - before <= 1
        # A known key keeps working during the flood's cooldown.
        assert (await http.get(ME, headers=bearer(issuer.token()))).status_code == 200


async def test_cached_keys_keep_working_when_idp_is_down(serve: Serve, issuer: OidcIssuer) -> None:
    async with serve() as (app, http):
        assert await app.state.auth.keys.wait_for_keys(5)
        issuer.down = True
        assert (await http.get(ME, headers=bearer(issuer.token()))).status_code == 200
        # Unknown kid while the IdP is down: the token is refused, not a 503.
        kid = issuer.add_key("EC", publish=False)
        response = await http.get(ME, headers=bearer(issuer.token(kid=kid)))
        assert response.status_code == 401
        # A background refresh failing keeps the last good keys.
        issuer.unpublish("rsa-1")
        await asyncio.gather(app.state.auth.keys.refresh(), return_exceptions=True)
        assert (await http.get(ME, headers=bearer(issuer.token()))).status_code == 200


async def test_cached_keys_keep_working_when_idp_is_slow(serve: Serve, issuer: OidcIssuer) -> None:
    async with serve(http_timeout_s=0.3) as (app, http):
        assert await app.state.auth.keys.wait_for_keys(5)
        issuer.hold()  # slower than any timeout: answers nothing until released
        try:
            async with asyncio.timeout(30):  # a hang detector, not a speed bound
                assert (await http.get(ME, headers=bearer(issuer.token()))).status_code == 200
                kid = issuer.add_key("EC", publish=False)
                response = await http.get(ME, headers=bearer(issuer.token(kid=kid)))
            assert response.status_code == 401
            # The refresh asked the IdP and gave up at its timeout while the IdP still held it.
            assert issuer.held_requests >= 1
        finally:
            issuer.release()


async def test_cold_start_with_idp_down_starts_and_answers_503(
    serve: Serve, issuer: OidcIssuer
) -> None:
    issuer.down = True
    async with serve() as (_app, http):
        assert (await http.get("/health/live")).status_code == 200
        response = await http.get(ME, headers=bearer(issuer.token()))
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "5"
        assert "www-authenticate" not in response.headers
        issuer.down = False

        async def recovered() -> bool:
            return (await http.get(ME, headers=bearer(issuer.token()))).status_code == 200

        await wait_until(recovered, timeout_s=10)


async def test_cold_start_with_slow_idp_answers_503(serve: Serve, issuer: OidcIssuer) -> None:
    issuer.hold()  # slower than any timeout: answers nothing until released
    try:
        async with serve(http_timeout_s=0.3) as (_app, http):
            async with asyncio.timeout(30):  # a hang detector, not a speed bound
                response = await http.get(ME, headers=bearer(issuer.token()))
            assert response.status_code == 503
            # Answered while the IdP still held the key fetch: the app gave up at its timeout.
            assert issuer.held_requests >= 1
    finally:
        issuer.release()


async def test_unreachable_issuer_answers_503(serve: Serve, issuer: OidcIssuer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with serve(oidc_issuer=f"http://127.0.0.1:{port}/realms/pulse") as (_app, http):
        claims = issuer.claims(iss=f"http://127.0.0.1:{port}/realms/pulse")
        response = await http.get(ME, headers=bearer(issuer.sign(claims)))
        assert response.status_code == 503


async def test_discovery_with_another_issuer_is_refused(serve: Serve, issuer: OidcIssuer) -> None:
    issuer.discovery_issuer = "https://evil.example/realms/pulse"
    async with serve() as (_app, http):
        response = await http.get(ME, headers=bearer(issuer.token()))
        assert response.status_code == 503
        assert issuer.jwks_fetches == 0


async def test_idp_calls_use_the_shared_client(serve: Serve, issuer: OidcIssuer) -> None:
    async with serve() as (app, _):
        source = app.state.auth.keys.source
        assert source.http is app.state.http
        assert isinstance(source.http, httpx.AsyncClient)


async def test_jwks_lifetime_follows_cache_control(serve: Serve, issuer: OidcIssuer) -> None:
    issuer.cache_control = "public, max-age=120"
    async with serve() as (app, _):
        keys = app.state.auth.keys
        assert await keys.wait_for_keys(5)
        assert 100 < keys.expires_in <= 120
        # The background task refreshes at 80% of the lifetime, before expiry.
        assert 80 < keys.next_refresh_in() <= 96


async def test_garbage_or_oversized_jwks_is_not_accepted(serve: Serve, issuer: OidcIssuer) -> None:
    for body in (b"not json", b'{"keys": [], "pad": "' + b"x" * 2_000_000 + b'"}', b'{"keys": []}'):
        issuer.raw_jwks = body
        async with serve() as (_app, http):
            response = await http.get(ME, headers=bearer(issuer.token()))
            assert response.status_code == 503, body[:20]
