"""JSON Web Keys: which key verifies which algorithm, and a parsed, fingerprinted key set."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
import structlog

log = structlog.get_logger("app.auth.jwks")

# Which key a JWS algorithm may be verified with (RFC 7518 section 3; RFC 8037).
KTY_FOR_ALG: dict[str, tuple[str, str | None]] = {
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
        wanted = KTY_FOR_ALG.get(alg)
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
        if alg is not None and alg not in KTY_FOR_ALG:
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
