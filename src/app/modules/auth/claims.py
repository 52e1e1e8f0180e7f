"""Turning token claims (JWT payload or introspection response) into a :class:`Principal`.

A caller's roles belong to a tenant. Three shapes of real IdPs are read, each switched on
by its settings; a token may use several, and the roles found add up:

(a) a claim mapping tenant to roles (``PULSE_OIDC_TENANT_ROLES_CLAIM``):
    ``{"pulse_tenants": {"acme": ["admin"], "beta": ["viewer"]}}``;
(b) ``tenant``/``role`` pairs packed in strings of a list claim
    (``PULSE_OIDC_TENANT_GROUPS_CLAIM`` and ``PULSE_OIDC_TENANT_GROUP_PATTERN``):
    ``["acme:admin"]``, or Keycloak group paths ``["/tenants/acme/admin"]``;
(c) a tenants claim plus a roles claim (``PULSE_OIDC_TENANT_CLAIM`` and
    ``PULSE_OIDC_ROLES_CLAIM``): the roles apply to every listed tenant, as the IdP said.

Role names go through ``PULSE_OIDC_ROLE_MAP`` when it is set (only mapped names count),
otherwise only ``viewer`` and ``admin`` count. ``operator`` is never a role name: it is
granted by ``PULSE_OIDC_OPERATOR_CLAIM``/``_VALUE`` or ``PULSE_OIDC_OPERATOR_SUBJECTS``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.core.settings import Settings
from app.modules.auth.principal import TENANT_ROLES, Principal

# The development issuer's operator grant, used only while it runs (its key is local).
DEV_OPERATOR_CLAIM = "pulse_dev_operator"
DEV_OPERATOR_VALUE = "true"
MAX_TENANTS = 1000


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


def _claim_values(value: Any) -> list[str]:
    """The values an operator claim holds: a string, a boolean, or a list of strings."""
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@dataclass(frozen=True)
class ClaimMapping:
    """Where tenants, roles and the operator grant live in a token."""

    tenant_claim: str = "tenant_id"
    roles_claim: str = "roles"
    role_map: Mapping[str, str] = field(default_factory=dict)
    tenant_roles_claim: str = ""
    groups_claim: str = ""
    group_pattern: re.Pattern[str] | None = None
    operator_claim: str = ""
    operator_value: str = ""
    operator_subjects: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings, *, dev_issuer: bool = False) -> ClaimMapping:
        """The mapping the settings describe. ``dev_issuer``: the development issuer runs,
        and (unless an operator claim is configured) grants operator with its own claim."""
        role_map = dict(p.split("=", 1) for p in _csv(settings.oidc_role_map))
        operator_claim = settings.oidc_operator_claim or ""
        operator_value = settings.oidc_operator_value or ""
        if dev_issuer and not operator_claim:
            operator_claim, operator_value = DEV_OPERATOR_CLAIM, DEV_OPERATOR_VALUE
        groups = settings.oidc_tenant_groups_claim or ""
        return cls(
            tenant_claim=settings.oidc_tenant_claim or "",
            roles_claim=settings.oidc_roles_claim or "",
            role_map=role_map,
            tenant_roles_claim=settings.oidc_tenant_roles_claim or "",
            groups_claim=groups,
            group_pattern=re.compile(settings.oidc_tenant_group_pattern) if groups else None,
            operator_claim=operator_claim,
            operator_value=operator_value,
            operator_subjects=frozenset(_csv(settings.oidc_operator_subjects or "")),
        )

    # --- roles -------------------------------------------------------------
    def pulse_role(self, idp_role: str) -> str | None:
        """The Pulse tenant role an IdP role name stands for, if any."""
        if self.role_map:
            # With a map, only mapped names count: an IdP group that happens to be called
            # "admin" for another product must not become a Pulse admin.
            mapped = self.role_map.get(idp_role)
            return mapped if mapped in TENANT_ROLES else None
        return idp_role if idp_role in TENANT_ROLES else None

    def _pulse_roles(self, names: list[str]) -> set[str]:
        return {r for r in map(self.pulse_role, names) if r is not None}

    def roles(self, claims: Mapping[str, Any]) -> frozenset[str]:
        """Shape (c): the roles claim, applied to every tenant of the tenants claim."""
        if not self.roles_claim:
            return frozenset()
        return frozenset(
            self._pulse_roles(_strings(claim_at(claims, self.roles_claim), self.roles_claim))
        )

    def tenants(self, claims: Mapping[str, Any]) -> frozenset[str]:
        if not self.tenant_claim:
            return frozenset()
        return frozenset(_strings(claim_at(claims, self.tenant_claim), self.tenant_claim))

    def tenant_roles(self, claims: Mapping[str, Any]) -> dict[str, frozenset[str]]:
        """Every tenant the token names, with the caller's Pulse roles in it."""
        found: dict[str, set[str]] = {}
        if self.tenant_claim:
            listed = self.tenants(claims)
            roles = self.roles(claims) if listed else frozenset()
            for tenant in listed:
                found.setdefault(tenant, set()).update(roles)
        if self.tenant_roles_claim:
            self._read_tenant_map(claims, found)
        if self.groups_claim and self.group_pattern is not None:
            self._read_groups(claims, found)
        if len(found) > MAX_TENANTS:
            raise ClaimsError(f"the token names more than {MAX_TENANTS} tenants")
        return {tenant: frozenset(roles) for tenant, roles in found.items()}

    def _read_tenant_map(self, claims: Mapping[str, Any], found: dict[str, set[str]]) -> None:
        value = claim_at(claims, self.tenant_roles_claim)
        if value is None:
            return
        if not isinstance(value, Mapping):
            raise ClaimsError(f"claim {self.tenant_roles_claim} must map tenant ids to roles")
        for tenant, names in value.items():
            if not isinstance(tenant, str) or not tenant:
                raise ClaimsError(f"claim {self.tenant_roles_claim} has an empty tenant id")
            where = f"{self.tenant_roles_claim}.{tenant}"
            found.setdefault(tenant, set()).update(self._pulse_roles(_strings(names, where)))

    def _read_groups(self, claims: Mapping[str, Any], found: dict[str, set[str]]) -> None:
        assert self.group_pattern is not None
        for group in _strings(claim_at(claims, self.groups_claim), self.groups_claim):
            match = self.group_pattern.fullmatch(group)
            if match is None:
                continue  # groups of other products
            tenant, role = match.group("tenant"), match.group("role")
            if tenant:
                roles = found.setdefault(tenant, set())
                pulse_role = self.pulse_role(role)
                if pulse_role is not None:
                    roles.add(pulse_role)

    def is_operator(self, claims: Mapping[str, Any], subject: str) -> bool:
        """Granted only by the configured claim value or subject list."""
        if subject in self.operator_subjects:
            return True
        if not self.operator_claim or not self.operator_value:
            return False
        return self.operator_value in _claim_values(claim_at(claims, self.operator_claim))

    # --- principal ---------------------------------------------------------
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
            tenant_roles=self.tenant_roles(claims),
            operator=self.is_operator(claims, subject),
            issuer=issuer if isinstance(issuer, str) else None,
            client_id=client_id if isinstance(client_id, str) else None,
            token_id=token_id if isinstance(token_id, str) else None,
            expires_at=int(exp) if isinstance(exp, int | float) else None,
        )

    # --- minting (the development issuer and tests) -------------------------
    def idp_role_for(self, role: str) -> str:
        """The IdP-side name of a Pulse role (the development issuer mints with it)."""
        for idp_name, pulse_role in self.role_map.items():
            if pulse_role == role:
                return idp_name
        return role

    def claims_for(self, tenants: list[str], role: str) -> dict[str, Any]:
        """Claims that give ``role`` in each of ``tenants`` under this mapping (``operator``:
        the configured operator grant). Raises ValueError when the mapping cannot say it."""
        claims: dict[str, Any] = {}
        if role == "operator":
            if not self.operator_claim or not self.operator_value:
                raise ValueError(
                    "no operator grant is configured: set PULSE_OIDC_OPERATOR_CLAIM and"
                    " PULSE_OIDC_OPERATOR_VALUE"
                )
            _set_claim(claims, self.operator_claim, [self.operator_value])
            role_names: list[str] = []
        elif role in TENANT_ROLES:
            role_names = [self.idp_role_for(role)]
        else:
            raise ValueError(f"unknown role {role!r}")
        if self.tenant_claim and self.roles_claim:
            _set_claim(claims, self.tenant_claim, list(tenants))
            _set_claim(claims, self.roles_claim, role_names)
        elif self.tenant_roles_claim:
            _set_claim(claims, self.tenant_roles_claim, {t: role_names for t in tenants})
        elif self.groups_claim and self.group_pattern is not None:
            _set_claim(claims, self.groups_claim, self._groups_for(tenants, role_names))
        else:
            raise ValueError("no tenant claim is configured")
        return claims

    def _groups_for(self, tenants: list[str], role_names: list[str]) -> list[str]:
        assert self.group_pattern is not None
        groups = []
        for tenant in tenants:
            for name in role_names:
                for candidate in (f"{tenant}:{name}", f"/tenants/{tenant}/{name}"):
                    if self.group_pattern.fullmatch(candidate):
                        groups.append(candidate)
                        break
                else:
                    raise ValueError("cannot spell a group for PULSE_OIDC_TENANT_GROUP_PATTERN")
        return groups


def _set_claim(claims: dict[str, Any], path: str, value: Any) -> None:
    """Set a claim by name, or by a dotted path into nested objects."""
    parts = path.split(".") if "://" not in path else [path]
    target = claims
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value
