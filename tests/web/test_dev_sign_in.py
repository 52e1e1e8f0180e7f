"""The development issuer's authorization code flow, at the protocol level (no browser):
PKCE is enforced, codes are single-use, redirects stay on this server, and the token it
issues is accepted by the API with the chosen tenants and role."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.fixtures.browser import PulseWeb


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


def authorize_params(pulse: PulseWeb, challenge: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "pulse-dashboard",
        "redirect_uri": pulse.base_url + "/auth/callback",
        "state": "s-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }


async def pick(
    pulse: PulseWeb, challenge: str, *, role: str = "viewer", tenants: str = "acme, beta"
) -> httpx.Response:
    form = {
        **authorize_params(pulse, challenge),
        "subject": "dana",
        "tenants": tenants,
        "role": role,
        "ttl_s": "600",
    }
    return await pulse.api.post("/dev-issuer/authorize", data=form)


def code_of(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["state"] == ["s-123"]
    return query["code"][0]


async def exchange(pulse: PulseWeb, code: str, verifier: str) -> httpx.Response:
    return await pulse.api.post(
        "/dev-issuer/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pulse.base_url + "/auth/callback",
            "client_id": "pulse-dashboard",
            "code_verifier": verifier,
        },
    )


async def test_code_and_verifier_give_a_token_the_api_accepts(pulse_web: PulseWeb) -> None:
    verifier, challenge = pkce()
    picker = await pulse_web.api.get(
        "/dev-issuer/authorize", params=authorize_params(pulse_web, challenge)
    )
    assert picker.status_code == 200
    assert "default-src 'none'" in picker.headers["content-security-policy"]
    assert "<script" not in picker.text
    chosen = await pick(pulse_web, challenge)
    code = code_of(chosen)
    assert "pulse_dev_issuer=" in chosen.headers["set-cookie"]
    assert "HttpOnly" in chosen.headers["set-cookie"]
    answer = await exchange(pulse_web, code, verifier)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    token = answer.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 600
    me = await pulse_web.api.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["subject"] == "dana"
    assert me.json()["tenants"] == ["acme", "beta"]
    assert me.json()["roles"] == ["viewer"]


async def test_wrong_verifier_and_reused_code_are_refused(pulse_web: PulseWeb) -> None:
    verifier, challenge = pkce()
    code = code_of(await pick(pulse_web, challenge))
    wrong = await exchange(pulse_web, code, pkce()[0])
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    # The failed attempt used the code up: the right verifier is too late now.
    late = await exchange(pulse_web, code, verifier)
    assert late.json()["error"] == "invalid_grant"
    verifier, challenge = pkce()
    code = code_of(await pick(pulse_web, challenge))
    assert (await exchange(pulse_web, code, verifier)).status_code == 200
    again = await exchange(pulse_web, code, verifier)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


async def test_authorize_refuses_foreign_redirects_and_missing_pkce(pulse_web: PulseWeb) -> None:
    _, challenge = pkce()
    cases = [
        {"redirect_uri": "https://evil.example/callback"},
        {"code_challenge_method": "plain"},
        {"code_challenge": ""},
        {"client_id": "someone-else"},
        {"response_type": "token"},
    ]
    for override in cases:
        params = authorize_params(pulse_web, challenge, **override)
        response = await pulse_web.api.get("/dev-issuer/authorize", params=params)
        assert response.status_code == 400, override
        assert "Sign-in error" in response.text
        assert "location" not in response.headers


async def test_remembered_choice_skips_the_picker_until_logout(pulse_web: PulseWeb) -> None:
    _, challenge = pkce()
    await pick(pulse_web, challenge, role="admin")  # the client keeps the session cookie
    again = await pulse_web.api.get(
        "/dev-issuer/authorize", params=authorize_params(pulse_web, challenge)
    )
    assert again.status_code == 303
    code_of(again)
    forced = await pulse_web.api.get(
        "/dev-issuer/authorize", params=authorize_params(pulse_web, challenge, prompt="login")
    )
    assert forced.status_code == 200
    assert "value='admin' checked" in forced.text
    out = await pulse_web.api.get(
        "/dev-issuer/logout",
        params={"post_logout_redirect_uri": pulse_web.base_url + "/signed-out"},
    )
    assert out.status_code == 303
    assert out.headers["location"] == pulse_web.base_url + "/signed-out"
    after = await pulse_web.api.get(
        "/dev-issuer/authorize", params=authorize_params(pulse_web, challenge)
    )
    assert after.status_code == 200
    assert "id='sign-in'" in after.text


async def test_bad_picker_answers_are_explained(pulse_web: PulseWeb) -> None:
    _, challenge = pkce()
    response = await pick(pulse_web, challenge, tenants="Not A Tenant!")
    assert response.status_code == 200
    assert "tenant ids" in response.text
    response = await pick(pulse_web, challenge, role="root")
    assert "pick a role" in response.text
