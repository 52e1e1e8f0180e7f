"""Opaque tokens through RFC 7662 introspection at the loopback issuer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.auth.conftest import Serve
from tests.fixtures.oidc import INTROSPECTION_CLIENT_ID, INTROSPECTION_CLIENT_SECRET, OidcIssuer
from tests.fixtures.structural import Suspended, complete_without_suspending

ME = "/api/v1/me"


def introspection(issuer: OidcIssuer, secret: str = INTROSPECTION_CLIENT_SECRET) -> dict[str, Any]:
    return {
        "oidc_introspection_url": issuer.issuer + "/protocol/openid-connect/token/introspect",
        "oidc_introspection_client_id": INTROSPECTION_CLIENT_ID,
        "oidc_introspection_client_secret": secret,
    }


def active(issuer: OidcIssuer, **extra: Any) -> dict[str, Any]:
    return {
        "active": True,
        "sub": "svc-1",
        "iss": issuer.issuer,
        "aud": "pulse",
        "exp": int(time.time()) + 600,
        "tenant_id": "acme",
        "roles": ["viewer"],
        "client_id": "reporting",
        **extra,
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_active_opaque_token_is_accepted_and_cached(serve: Serve, issuer: OidcIssuer) -> None:
    issuer.register_opaque("opaque-1", **active(issuer))
    async with serve(**introspection(issuer)) as (_app, http):
        response = await http.get(ME, headers=bearer("opaque-1"))
        assert response.status_code == 200, response.text
        assert response.json()["subject"] == "svc-1"
        assert response.json()["tenants"] == ["acme"]
        assert (await http.get(ME, headers=bearer("opaque-1"))).status_code == 200
        assert issuer.introspection_calls == 1


async def test_inactive_token_is_401_and_cached_briefly(serve: Serve, issuer: OidcIssuer) -> None:
    async with serve(**introspection(issuer)) as (_app, http):
        for _ in range(3):
            response = await http.get(ME, headers=bearer("revoked"))
            assert response.status_code == 401
            assert (
                'error_description="the token is not active"'
                in response.headers["www-authenticate"]
            )
        assert issuer.introspection_calls == 1


@pytest.mark.parametrize(
    "override",
    [
        {"exp": 1},
        {"aud": "another-api"},
        {"iss": "https://elsewhere.example"},
        {"sub": None, "client_id": None},
    ],
)
async def test_active_but_unacceptable_answers_are_refused(
    serve: Serve, issuer: OidcIssuer, override: dict[str, Any]
) -> None:
    body = {k: v for k, v in active(issuer, **override).items() if v is not None}
    issuer.register_opaque("odd", **body)
    async with serve(**introspection(issuer)) as (_app, http):
        assert (await http.get(ME, headers=bearer("odd"))).status_code == 401


async def test_concurrent_requests_share_one_introspection(
    serve: Serve, issuer: OidcIssuer
) -> None:
    issuer.register_opaque("shared", **active(issuer))
    issuer.introspection_delay_s = 0.3
    async with serve(**introspection(issuer)) as (_app, http):
        responses = await asyncio.gather(
            *(http.get(ME, headers=bearer("shared")) for _ in range(20))
        )
        assert {r.status_code for r in responses} == {200}
        assert issuer.introspection_calls == 1


async def test_warm_auth_answers_from_memory_without_waiting_for_a_slow_idp(
    serve: Serve, issuer: OidcIssuer
) -> None:
    issuer.register_opaque("warm", **active(issuer))
    issuer.introspection_delay_s = 0.3
    async with serve(**introspection(issuer)) as (app, _http):
        authenticator = app.state.auth
        cold = authenticator.authenticate("warm")
        with pytest.raises(Suspended):  # the first one waits for the IdP
            complete_without_suspending(cold)
        await authenticator.authenticate("warm")
        assert issuer.introspection_calls == 1
        # Warm: answered from memory, so it never waits on anything (a socket, a lock, a
        # task) - however slow the IdP or busy the machine. Speed itself is benchmarked.
        for _ in range(200):
            principal = complete_without_suspending(authenticator.authenticate("warm"))
            assert principal.subject == "svc-1"
        assert issuer.introspection_calls == 1


async def test_errors_are_not_cached_and_answer_503(serve: Serve, issuer: OidcIssuer) -> None:
    issuer.register_opaque("tok", **active(issuer))
    async with serve(**introspection(issuer, secret="wrong")) as (_app, http):
        for _ in range(2):
            assert (await http.get(ME, headers=bearer("tok"))).status_code == 503
        assert issuer.introspection_calls == 2
    issuer.down = True
    async with serve(**introspection(issuer)) as (_app, http):
        assert (await http.get(ME, headers=bearer("tok"))).status_code == 503
        issuer.down = False
        assert (await http.get(ME, headers=bearer("tok"))).status_code == 200


async def test_jwts_are_still_validated_locally(serve: Serve, issuer: OidcIssuer) -> None:
    async with serve(**introspection(issuer)) as (_app, http):
        assert (await http.get(ME, headers=bearer(issuer.token()))).status_code == 200
        assert issuer.introspection_calls == 0


async def test_dotted_opaque_token_falls_back_to_introspection(
    serve: Serve, issuer: OidcIssuer
) -> None:
    issuer.register_opaque("v2.local.abc", **active(issuer, sub=None))
    async with serve(**introspection(issuer)) as (_app, http):
        response = await http.get(ME, headers=bearer("v2.local.abc"))
        assert response.status_code == 200, response.text
        assert response.json()["subject"] == "reporting"  # the client, as sub is absent
