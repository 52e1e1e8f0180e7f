"""Who is calling: the principal built from a validated access token, and Pulse's roles.

A caller's roles belong to a tenant: an admin of ``acme`` who is a viewer of ``beta`` is a
viewer in ``beta``. ``operator`` is not a tenant role: it is platform-wide, and only an
explicit setting grants it (``PULSE_OIDC_OPERATOR_CLAIM``/``_VALUE`` or
``PULSE_OIDC_OPERATOR_SUBJECTS``), never a role name in a token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

import msgspec

Role = Literal["viewer", "admin", "operator"]
ROLES: Final[tuple[Role, ...]] = ("viewer", "admin", "operator")
# Roles a token may hold in a tenant; operator is granted only by configuration.
TENANT_ROLES: Final[frozenset[str]] = frozenset({"viewer", "admin"})
# operator > admin > viewer: a higher role may do everything a lower one may.
ROLE_RANK: Final[dict[str, int]] = {"viewer": 1, "admin": 2, "operator": 3}


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The authenticated caller: roles per tenant, and whether it is a platform operator."""

    subject: str
    # tenant id -> the caller's Pulse roles in it (an empty set: a member without a role).
    tenant_roles: Mapping[str, frozenset[str]] = msgspec.field(default_factory=dict)
    operator: bool = False
    issuer: str | None = None
    client_id: str | None = None
    token_id: str | None = None
    expires_at: int | None = None

    @property
    def is_operator(self) -> bool:
        return self.operator

    @property
    def tenants(self) -> frozenset[str]:
        """The tenants the caller is a member of."""
        return frozenset(self.tenant_roles)

    def roles_in(self, tenant_id: str) -> frozenset[str]:
        """The caller's roles in ``tenant_id`` (``operator`` included for an operator)."""
        roles = self.tenant_roles.get(tenant_id, frozenset())
        return roles | {"operator"} if self.operator else roles

    def has_role(self, role: str, tenant_id: str | None) -> bool:
        """True when the caller holds ``role`` (or a higher one) in ``tenant_id``.

        ``operator`` is platform-wide and ranks above every tenant role. ``tenant_id=None``
        (a route outside any tenant) asks whether the caller holds the role in any tenant.
        """
        needed = ROLE_RANK.get(role)
        if needed is None:
            raise ValueError(f"unknown role {role!r}")
        if self.operator:
            return True
        if tenant_id is None:
            held: frozenset[str] = frozenset().union(*self.tenant_roles.values())
        else:
            held = self.tenant_roles.get(tenant_id, frozenset())
        return max((ROLE_RANK.get(r, 0) for r in held), default=0) >= needed

    def can_access(self, tenant_id: str) -> bool:
        """Member of ``tenant_id``, or a platform operator."""
        return self.operator or tenant_id in self.tenant_roles
