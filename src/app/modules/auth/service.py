"""The authenticator: one per app, built at start-up from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from app.modules.auth.errors import IdentityProviderUnavailable, InvalidToken
from app.modules.auth.introspection import Introspector
from app.modules.auth.jwks import JwksCache
from app.modules.auth.key_sources import OidcDiscovery
from app.modules.auth.principal import Principal
from app.modules.auth.tokens import TokenValidator, check_size, looks_like_jwt


@dataclass
class Authenticator:
    """Turns a bearer token into a :class:`Principal` or raises InvalidToken / 503."""

    issuer: str | None
    validator: TokenValidator | None
    keys: JwksCache | None
    introspector: Introspector | None = None
    # The configured issuer's discovery document (None without one, or in development).
    discovery: OidcDiscovery | None = None

    async def authenticate(self, token: str) -> Principal:
        check_size(token)
        if looks_like_jwt(token) and self.validator is not None:
            try:
                return await self.validator.validate(token)
            except InvalidToken as exc:
                # An opaque token may contain dots; if it does not even parse as a JWT,
                # the IdP may still know it.
                if exc.reason != "malformed" or self.introspector is None:
                    raise
        if self.introspector is not None:
            return await self.introspector.principal(token)
        if self.validator is None:
            raise IdentityProviderUnavailable("no identity provider is configured")
        raise InvalidToken("the token is malformed", reason="malformed")

    async def close(self) -> None:
        if self.keys is not None:
            await self.keys.close()
        if self.introspector is not None:
            await self.introspector.close()
