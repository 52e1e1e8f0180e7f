"""Who is calling: the principal built from a validated access token, and Pulse's roles."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

Role = Literal["viewer", "admin", "operator"]
ROLES: Final[tuple[Role, ...]] = ("viewer", "admin", "operator")
# operator > admin > viewer: a higher role may do everything a lower one may.
ROLE_RANK: Final[dict[str, int]] = {"viewer": 1, "admin": 2, "operator": 3}


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The authenticated caller. ``operator`` is platform-wide and may act on any tenant."""

    subject: str
    tenants: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    issuer: str | None = None
    client_id: str | None = None
    token_id: str | None = None
    expires_at: int | None = None

    @property
    def is_operator(self) -> bool:
        return "operator" in self.roles

    @property
    def highest_rank(self) -> int:
        return max((ROLE_RANK.get(r, 0) for r in self.roles), default=0)

    def has_role(self, role: str) -> bool:
        """True when one of the caller's roles is ``role`` or ranks above it."""
        needed = ROLE_RANK.get(role)
        if needed is None:
            raise ValueError(f"unknown role {role!r}")
        return self.highest_rank >= needed

    def can_access(self, tenant_id: str) -> bool:
        """Member of ``tenant_id``, or a platform operator."""
        return self.is_operator or tenant_id in self.tenants
