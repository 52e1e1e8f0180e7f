"""Turning token claims (JWT payload or introspection response) into a :class:`Principal`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.core.settings import Settings
from app.modules.auth.principal import ROLES, Principal


class ClaimsError(Exception):
    """The claims are structurally wrong; the message is safe to show the caller."""


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """Read a claim by name, or by a dotted path into nested objects (``realm_access.roles``).

    A literal claim name containing dots (``https://pulse/tenants``) wins over the path.
    """
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _strings(value: Any, claim: str) -> list[str]:
    """A claim that is a string (space separated) or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ClaimsError(f"claim {claim} must be a string or a list of strings")


@dataclass(frozen=True)
class ClaimMapping:
    """Where tenants and roles live in a token and how IdP roles map to Pulse roles."""

    tenant_claim: str
    roles_claim: str
    role_map: Mapping[str, str]

    @classmethod
    def from_settings(cls, settings: Settings) -> ClaimMapping:
        pairs = (p.strip() for p in settings.oidc_role_map.split(","))
        role_map = dict(p.split("=", 1) for p in pairs if p)
        return cls(settings.oidc_tenant_claim, settings.oidc_roles_claim, role_map)

    def roles(self, claims: Mapping[str, Any]) -> frozenset[str]:
        raw = _strings(claim_at(claims, self.roles_claim), self.roles_claim)
        if self.role_map:
            # With a map, only mapped names count: an IdP group that happens to be called
            # "admin" for another product must not become a Pulse admin.
            return frozenset(self.role_map[r] for r in raw if r in self.role_map)
        return frozenset(r for r in raw if r in ROLES)

    def tenants(self, claims: Mapping[str, Any]) -> frozenset[str]:
        return frozenset(_strings(claim_at(claims, self.tenant_claim), self.tenant_claim))

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise ClaimsError("the token has no subject (sub)")
        exp = claims.get("exp")
        client_id = claims.get("client_id", claims.get("azp"))
        token_id = claims.get("jti")
        issuer = claims.get("iss")
        return Principal(
            subject=subject,
            tenants=self.tenants(claims),
            roles=self.roles(claims),
            issuer=issuer if isinstance(issuer, str) else None,
            client_id=client_id if isinstance(client_id, str) else None,
            token_id=token_id if isinstance(token_id, str) else None,
            expires_at=int(exp) if isinstance(exp, int | float) else None,
        )

    def idp_role_for(self, role: str) -> str:
        """The IdP-side name of a Pulse role (the development issuer mints with it)."""
        for idp_name, pulse_role in self.role_map.items():
            if pulse_role == role:
                return idp_name
        return role
