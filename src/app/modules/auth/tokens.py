"""JWT access-token validation (RFC 9068 profile, RFC 8725 best practices) with PyJWT."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any

import jwt

from app.modules.auth.claims import ClaimMapping, ClaimsError
from app.modules.auth.errors import InvalidToken
from app.modules.auth.jwks import JwksCache
from app.modules.auth.principal import Principal

# Anything longer is refused before base64 or JSON work: real access tokens are far smaller.
MAX_TOKEN_BYTES = 8 * 1024
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
PLAIN_JWT_TYPES = frozenset({"jwt", "application/jwt"})
# A token already verified is remembered briefly (keyed by its SHA-256), so a dashboard
# sending the same token many times pays the signature check once. Entries die at the
# token's exp, after VERIFIED_TTL_S, or when the key set is refreshed.
VERIFIED_TTL_S = 60.0
VERIFIED_MAX_ENTRIES = 10_000


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def check_size(token: str) -> None:
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("the token is too large", reason="too_large")


class TokenValidator:
    """Validates a signed JWT access token for one issuer and audience."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        algorithms: frozenset[str],
        leeway_s: float,
        strict_typ: bool,
        keys: JwksCache,
        mapping: ClaimMapping,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.leeway_s = leeway_s
        self.strict_typ = strict_typ
        self.keys = keys
        self.mapping = mapping
        self._verified: OrderedDict[bytes, tuple[float, int, Principal]] = OrderedDict()

    async def validate(self, token: str) -> Principal:
        check_size(token)
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._verified.get(digest)
        if hit is not None:
            expires_at, generation, principal = hit
            if expires_at > time.monotonic() and generation == self.keys.generation:
                return principal
            del self._verified[digest]
        claims = await self.verified_claims(token)
        try:
            principal = self.mapping.principal(claims)
        except ClaimsError as exc:
            raise InvalidToken(str(exc), reason="claims") from exc
        self._remember(digest, claims, principal)
        return principal

    def _remember(self, digest: bytes, claims: dict[str, Any], principal: Principal) -> None:
        # exp is required and was just checked; keep the entry no longer than exp allows.
        lifetime = min(VERIFIED_TTL_S, float(claims["exp"]) + self.leeway_s - time.time())
        if lifetime <= 0:
            return
        self._verified[digest] = (time.monotonic() + lifetime, self.keys.generation, principal)
        self._verified.move_to_end(digest)
        while len(self._verified) > VERIFIED_MAX_ENTRIES:
            self._verified.popitem(last=False)

    async def verified_claims(self, token: str) -> dict[str, Any]:
        check_size(token)
        header = self._header(token)
        alg = header["alg"]
        kid = header.get("kid")
        # jku, x5u, jwk and x5c are never used to find a key: only our issuer's JWKS counts.
        key = await self.keys.key_for(kid, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": True,
                    "verify_iss": True,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("the token has expired", reason="expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("the token is not valid yet", reason="not_yet_valid") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("the token has the wrong issuer", reason="issuer") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("the token is not meant for this API", reason="audience") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token has no {exc.claim} claim", reason="claims") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("the token signature is invalid", reason="signature") from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidToken("the token is malformed or invalid", reason="malformed") from exc
        return claims

    def _header(self, token: str) -> dict[str, Any]:
        if not looks_like_jwt(token):
            raise InvalidToken("the token is malformed", reason="malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise InvalidToken("the token header is malformed", reason="malformed") from exc
        except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
            # PyJWT checks e.g. that kid is a string; anything else it refuses is malformed too.
            raise InvalidToken("the token key id is malformed", reason="malformed") from exc
        alg = header.get("alg")
        # Only the configured asymmetric algorithms: never "none", never HS* (RFC 8725 3.1).
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken("the token algorithm is not allowed", reason="algorithm")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
            raise InvalidToken("the token key id is malformed", reason="malformed")
        typ = header.get("typ")
        if typ is not None and not isinstance(typ, str):
            raise InvalidToken("the token type is malformed", reason="malformed")
        typ_lower = typ.lower() if typ else None
        if typ_lower in ACCESS_TOKEN_TYPES:
            return header
        if self.strict_typ:
            raise InvalidToken("an access token (typ at+jwt) is required", reason="typ")
        if typ_lower is not None and typ_lower not in PLAIN_JWT_TYPES:
            raise InvalidToken("the token type is not an access token", reason="typ")
        return header
