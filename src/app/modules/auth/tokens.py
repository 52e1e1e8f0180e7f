"""JWT access-token validation (RFC 9068 profile, RFC 8725 best practices) with PyJWT."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from app.modules.auth.claims import ClaimMapping, ClaimsError
from app.modules.auth.errors import InvalidToken
from app.modules.auth.jwks import JwksCache
from app.modules.auth.keys import KeySet, VerificationKey
from app.modules.auth.principal import Principal

# Anything longer is refused before base64 or JSON work: real access tokens are far smaller.
MAX_TOKEN_BYTES = 8 * 1024
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
PLAIN_JWT_TYPES = frozenset({"jwt", "application/jwt"})
# A verified token is remembered at most this long (and never past its exp).
TOKEN_CACHE_TTL_S = 300.0
TOKEN_CACHE_MAX_ENTRIES = 10_000

Clock = Callable[[], float]


@dataclass(frozen=True)
class _Verified:
    expires_at: float  # wall clock, like exp
    key: str  # fingerprint of the key whose signature was checked
    principal: Principal


class TokenCache:
    """Tokens that passed every check, by SHA-256, until ``min(exp, now + ttl)``.

    Bounded (least recently used evicted); an entry is dropped when the key that verified
    it leaves the issuer's JWKS. The token itself is never stored, only its digest.
    """

    def __init__(
        self,
        max_entries: int = TOKEN_CACHE_MAX_ENTRIES,
        *,
        ttl_s: float = TOKEN_CACHE_TTL_S,
        clock: Clock = time.time,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def digest(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, digest: bytes) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            self.misses += 1
            return None
        if entry.expires_at <= self.clock():
            del self._entries[digest]
            self.misses += 1
            return None
        self._entries.move_to_end(digest)
        self.hits += 1
        return entry.principal

    def put(self, digest: bytes, principal: Principal, *, exp: float, key: str) -> None:
        if self.max_entries <= 0:
            return
        expires_at = min(exp, self.clock() + self.ttl_s)
        if expires_at <= self.clock():
            return
        self._entries[digest] = _Verified(expires_at, key, principal)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def keep_keys(self, keys: KeySet) -> None:
        """Forget every token verified by a key that is no longer in ``keys``."""
        kept = keys.fingerprints
        for digest in [d for d, e in self._entries.items() if e.key not in kept]:
            del self._entries[digest]

    def clear(self) -> None:
        self._entries.clear()


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
        cache: TokenCache | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.leeway_s = leeway_s
        self.strict_typ = strict_typ
        self.keys = keys
        self.mapping = mapping
        self.cache = cache if cache is not None else TokenCache()
        keys.on_keys_changed(self.cache.keep_keys)

    async def validate(self, token: str) -> Principal:
        check_size(token)
        digest = TokenCache.digest(token)
        # Keys past their max-stale age answer 503 on the full path; so does a cached token.
        if self.keys.keys is not None:
            cached = self.cache.get(digest)
            if cached is not None:
                return cached
        claims, key = await self._verify(token)
        try:
            principal = self.mapping.principal(claims)
        except ClaimsError as exc:
            raise InvalidToken(str(exc), reason="claims") from exc
        # Only here has the token passed every check (signature, iss, aud, exp, nbf, the
        # required claims and the tenant/role mapping).
        self.cache.put(digest, principal, exp=float(claims["exp"]), key=key.fingerprint)
        return principal

    async def verified_claims(self, token: str) -> dict[str, Any]:
        """The claims of a token whose signature and registered claims check out."""
        claims, _ = await self._verify(token)
        return claims

    async def _verify(self, token: str) -> tuple[dict[str, Any], VerificationKey]:
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
        return claims, key

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
