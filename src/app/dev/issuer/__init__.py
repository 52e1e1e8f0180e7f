"""The development issuer: a local key pair, discovery and JWKS on the app itself.

Only with ``PULSE_ENV=development`` and no ``PULSE_OIDC_ISSUER``. Its tokens go through
exactly the same validation as a real IdP's (the key cache is filled from the local public
key instead of over HTTP). It refuses to run anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from app.core.openapi import DEV_ISSUER_PATH
from app.core.settings import Settings
from app.modules.auth import ClaimMapping, KeySet, parse_jwks

DEV_ALGORITHM = "ES256"
KEY_FILE = Path("dev-issuer") / "signing-key.pem"


class DevIssuerRefused(Exception):
    """The development issuer cannot run with these settings."""


def ensure_allowed(settings: Settings) -> None:
    if settings.env == "production":
        raise DevIssuerRefused(
            "the development issuer never runs with PULSE_ENV=production; set PULSE_OIDC_ISSUER"
        )
    if settings.oidc_issuer:
        raise DevIssuerRefused(
            f"PULSE_OIDC_ISSUER is set ({settings.oidc_issuer}); get tokens from that issuer"
        )
    if settings.env != "development":
        raise DevIssuerRefused("the development issuer runs only with PULSE_ENV=development")


def dev_issuer_url(settings: Settings) -> str:
    base = settings.public_url or f"http://{settings.host}:{settings.port}"
    return base.rstrip("/") + DEV_ISSUER_PATH


def load_or_create_key(data_path: Path) -> ec.EllipticCurvePrivateKey:
    """The issuer's private key under the data dir (created 0600 on first use). Blocking."""
    path = data_path / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise DevIssuerRefused(f"{path} does not hold an EC private key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.replace(tmp, path)
    return key


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    # RFC 7638 thumbprint as kid: stable for the key, changes when the key file changes.
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    jwk["kid"] = jwt.utils.base64url_encode(digest).decode()
    jwk["use"] = "sig"
    jwk["alg"] = DEV_ALGORITHM
    return jwk


class DevIssuer:
    """Mints tokens and serves the documents a real issuer would."""

    def __init__(self, settings: Settings, key: ec.EllipticCurvePrivateKey) -> None:
        self.settings = settings
        self.key = key
        self.issuer = dev_issuer_url(settings)
        self.jwk = public_jwk(key)
        # Operator tokens carry the configured operator grant, or the development issuer's
        # own claim when none is configured (its signing key never leaves the data dir).
        self.mapping = ClaimMapping.from_settings(settings, dev_issuer=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> DevIssuer:
        ensure_allowed(settings)
        return cls(settings, load_or_create_key(settings.data_path))

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    @property
    def key_set(self) -> KeySet:
        return parse_jwks(self.jwks)

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + "/jwks.json",
            "id_token_signing_alg_values_supported": [DEV_ALGORITHM],
            "subject_types_supported": ["public"],
            # Sign-in for the web dashboard: app.dev.issuer.authorize.
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "end_session_endpoint": self.issuer + "/logout",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
        }

    def mint(
        self,
        *,
        tenants: list[str],
        role: str,
        subject: str = "dev-user",
        ttl_s: int = 8 * 3600,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.settings.oidc_audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
            "client_id": "pulse-dev-cli",
        }
        try:
            claims.update(self.mapping.claims_for(tenants, role))
        except ValueError as exc:
            raise DevIssuerRefused(str(exc)) from exc
        return jwt.encode(
            claims,
            self.key,
            algorithm=DEV_ALGORITHM,
            headers={"kid": self.jwk["kid"], "typ": "at+jwt"},
        )
