"""Access-token validation against the loopback issuer: each bad token gets the exact error."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from litestar import Litestar

from app.core.settings import Settings
from app.main import create_app
from tests.conftest import make_settings, serve_in_process
from tests.fixtures.oidc import EC_KID, OidcIssuer

ME = "/api/v1/me"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


def assert_invalid_token(response: httpx.Response, description: str) -> None:
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="pulse", error="invalid_token"'), challenge
    assert f'error_description="{description}"' in challenge, challenge
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == description


async def get_me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get(ME, headers={"Authorization": f"Bearer {token}"})


async def test_valid_rsa_and_ec_tokens_are_accepted(
    client: httpx.AsyncClient, issuer: OidcIssuer
) -> None:
    rsa_token = issuer.token("acme", "admin")
    ec_token = issuer.token("acme", "viewer", kid=EC_KID)
    assert (await get_me(client, rsa_token)).status_code == 200
    response = await get_me(client, ec_token)
    assert response.status_code == 200, response.text
    assert response.json()["roles"] == ["viewer"]


async def test_alg_none_is_rejected(client: httpx.AsyncClient, issuer: OidcIssuer) -> None:
    token = unsigned({"alg": "none", "typ": "at+jwt", "kid": "rsa-1"}, issuer.claims())
    assert_invalid_token(await get_me(client, token), "the token algorithm is not allowed")


async def test_hs256_signed_with_the_rsa_public_key_is_rejected(
    client: httpx.AsyncClient, issuer: OidcIssuer
) -> None:
    public_pem = (
        issuer.keys["rsa-1"]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "rsa-1"}
    signing_input = unsigned(header, issuer.claims()).rsplit(".", 1)[0]
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(signature)}"
    assert_invalid_token(await get_me(client, token), "the token algorithm is not allowed")


async def test_algorithm_that_does_not_fit_the_key_type_is_rejected(
    client: httpx.AsyncClient, issuer: OidcIssuer
) -> None:
    # ES256 is allowed, but rsa-1 is an RSA key: the header may not pick the verifier.
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(
        issuer.claims(), attacker, algorithm="ES256", headers={"kid": "rsa-1", "typ": "at+jwt"}
    )
    assert_invalid_token(await get_me(client, token), "no signing key fits the token")


async def test_expired_token_is_rejected_beyond_the_leeway(
    client: httpx.AsyncClient, issuer: OidcIssuer
) -> None:
    now = int(time.time())
    expired = issuer.token(exp=now - 60, iat=now - 600)
    assert_invalid_token(await get_me(client, expired), "the token has expired")
    within_leeway = issuer.token(exp=now - 10, iat=now - 600)
    assert (await get_me(client, within_leeway)).status_code == 200


async def test_nbf_and_iat_in_the_future_are_rejected(
    client: httpx.AsyncClient, issuer: OidcIssuer
) -> None:
    now = int(time.time())
    assert_invalid_token(
        await get_me(client, issuer.token(nbf=now + 120)), "the token is not valid yet"
    )
    assert_invalid_token(
        await get_me(client, issuer.token(iat=now + 120)), "the token is not valid yet"
    )
    assert (await get_me(client, issuer.token(nbf=now + 10))).status_code == 200


async def test_wrong_issuer_is_rejected(client: httpx.AsyncClient, issuer: OidcIssuer) -> None:
    token = issuer.token(iss=issuer.issuer + "/other")
    assert_invalid_token(await get_me(client, token), "the token has the wrong issuer")
    # "exact": a trailing slash is another issuer.
    assert_invalid_token(
        await get_me(client, issuer.token(iss=issuer.issuer + "/")),
        "the token has the wrong issuer",
    )


async def test_wrong_audience_is_rejected(client: httpx.AsyncClient, issuer: OidcIssuer) -> None:
    assert_invalid_token(
        await get_me(client, issuer.token(aud="other-api")), "the token is not meant for this API"
    )
    assert (await get_me(client, issuer.token(aud=["other-api", "pulse"]))).status_code == 200


async def test_missing_sub_and_missing_exp_are_rejected(
    client: httpx.AsyncClient, issuer: OidcIssuer
) -> None:
    claims = issuer.claims()
    del claims["sub"]
    assert_invalid_token(await get_me(client, issuer.sign(claims)), "the token has no sub claim")
    claims = issuer.claims()
    del claims["exp"]
    assert_invalid_token(await get_me(client, issuer.sign(claims)), "the token has no exp claim")


async def test_tampered_signature_and_payload_are_rejected(
    client: httpx.AsyncClient, issuer: OidcIssuer
) -> None:
    token = issuer.token()
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[10] ^= 0xFF
    assert_invalid_token(
        await get_me(client, f"{head}.{payload}.{b64(bytes(raw))}"),
        "the token signature is invalid",
    )
    operator_claims = issuer.claims(role="operator")
    forged_payload = b64(json.dumps(operator_claims).encode())
    assert_invalid_token(
        await get_me(client, f"{head}.{forged_payload}.{signature}"),
        "the token signature is invalid",
    )


async def test_unknown_kid_is_rejected(client: httpx.AsyncClient, issuer: OidcIssuer) -> None:
    kid = issuer.add_key("RSA", publish=False)
    assert_invalid_token(await get_me(client, issuer.token(kid=kid)), "unknown signing key")


async def test_oversized_token_is_rejected_before_parsing(
    client: httpx.AsyncClient, issuer: OidcIssuer
) -> None:
    token = issuer.token(padding="x" * 9000)
    assert len(token) > 8192
    assert_invalid_token(await get_me(client, token), "the token is too large")
    # Not even a JWT: the size check comes first.
    assert_invalid_token(await get_me(client, "A" * 9000), "the token is too large")


@pytest.mark.parametrize(
    ("token", "description"),
    [
        ("abc.def.ghi", "the token header is malformed"),
        ("not-a-jwt", "the token is malformed"),
        (b64(b"[1,2]") + ".e30.c2ln", "the token header is malformed"),
        (b64(b'{"alg": 5}') + ".e30.c2ln", "the token algorithm is not allowed"),
        (b64(b'{"alg": "RS256", "kid": 7}') + ".e30.c2ln", "the token key id is malformed"),
        ("....", "the token is malformed"),
    ],
)
async def test_garbage_tokens_are_rejected(
    client: httpx.AsyncClient, token: str, description: str
) -> None:
    assert_invalid_token(await get_me(client, token), description)


async def test_non_bearer_or_empty_authorization_gets_a_challenge(
    client: httpx.AsyncClient,
) -> None:
    basic = await client.get(ME, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401
    assert basic.headers["www-authenticate"] == 'Bearer realm="pulse"'
    empty = await client.get(ME, headers={"Authorization": "Bearer "})
    assert empty.status_code == 401
    assert 'error="invalid_request"' in empty.headers["www-authenticate"]


async def test_embedded_jwk_jku_and_x5u_headers_are_ignored(
    client: httpx.AsyncClient, issuer: OidcIssuer
) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(attacker.public_key()))
    headers = {
        "kid": "attacker",
        "typ": "at+jwt",
        "jwk": jwk,
        "jku": issuer.url + "/attacker-jwks",
        "x5u": issuer.url + "/attacker.pem",
    }
    token = jwt.encode(issuer.claims(role="operator"), attacker, algorithm="ES256", headers=headers)
    assert_invalid_token(await get_me(client, token), "unknown signing key")
    # Same with a kid the issuer does have: the embedded key is still not used.
    headers["kid"] = EC_KID
    token = jwt.encode(issuer.claims(role="operator"), attacker, algorithm="ES256", headers=headers)
    assert_invalid_token(await get_me(client, token), "the token signature is invalid")


async def test_plain_jwt_typ_accepted_unless_strict(
    client: httpx.AsyncClient, issuer: OidcIssuer, settings: Settings
) -> None:
    plain = issuer.sign(issuer.claims(), typ="JWT")
    missing = issuer.sign(issuer.claims(), typ=None)
    assert (await get_me(client, plain)).status_code == 200
    assert (await get_me(client, missing)).status_code == 200
    other = issuer.sign(issuer.claims(), typ="dpop+jwt")
    assert_invalid_token(await get_me(client, other), "the token type is not an access token")


@pytest.fixture
async def strict_client(settings: Settings, clean_tables: None) -> AsyncIterator[httpx.AsyncClient]:
    strict = make_settings(settings.database_url or "", oidc_strict_typ=True)
    async with serve_in_process(create_app(strict)) as http:
        yield http


async def test_id_token_is_rejected_in_strict_mode(
    strict_client: httpx.AsyncClient, issuer: OidcIssuer
) -> None:
    # An ID token: typ JWT, aud = the client, nonce... Strict mode wants typ at+jwt.
    id_token = issuer.sign(issuer.claims(nonce="n-0S6_WzA2Mj", azp="pulse"), typ="JWT")
    assert_invalid_token(
        await get_me(strict_client, id_token), "an access token (typ at+jwt) is required"
    )
    assert (await get_me(strict_client, issuer.token())).status_code == 200


async def test_claim_mapping_keycloak_style(
    settings: Settings, clean_tables: None, issuer: OidcIssuer
) -> None:
    keycloak = make_settings(
        settings.database_url or "",
        oidc_tenant_claim="pulse_tenants",
        oidc_roles_claim="realm_access.roles",
        oidc_role_map="pulse-admins=admin,pulse-viewers=viewer",
        oidc_operator_claim="realm_access.roles",
        oidc_operator_value="pulse-platform-operators",
    )
    app: Litestar = create_app(keycloak)
    async with serve_in_process(app) as http:
        claims = issuer.claims(tenant=None, role=[])
        del claims["roles"]
        claims["pulse_tenants"] = "acme"
        claims["realm_access"] = {"roles": ["offline_access", "pulse-admins", "admin"]}
        response = await get_me(http, issuer.sign(claims))
        assert response.status_code == 200, response.text
        # "admin" is not in the map, so only the mapped group counts.
        assert response.json()["roles"] == ["admin"]
        assert response.json()["tenants"] == ["acme"]
        assert response.json()["is_operator"] is False
        claims["realm_access"] = {"roles": ["pulse-platform-operators"]}
        response = await get_me(http, issuer.sign(claims))
        assert response.json()["is_operator"] is True


async def test_space_separated_scope_as_roles(
    settings: Settings, clean_tables: None, issuer: OidcIssuer
) -> None:
    scoped = make_settings(
        settings.database_url or "",
        oidc_roles_claim="scope",
        oidc_role_map="pulse:read=viewer,pulse:admin=admin",
    )
    async with serve_in_process(create_app(scoped)) as http:
        claims = issuer.claims(role=[])
        claims["scope"] = "openid profile pulse:read"
        response = await get_me(http, issuer.sign(claims))
        assert response.status_code == 200, response.text
        assert response.json()["roles"] == ["viewer"]


async def test_malformed_roles_claim_is_rejected(
    client: httpx.AsyncClient, issuer: OidcIssuer
) -> None:
    token = issuer.sign(issuer.claims(roles={"admin": True}))
    assert_invalid_token(
        await get_me(client, token), "claim roles must be a string or a list of strings"
    )
