"""Auth response schemas."""

from __future__ import annotations

import msgspec


class Me(msgspec.Struct, kw_only=True):
    """The caller as Pulse sees it."""

    subject: str
    tenants: list[str]
    # Every role the caller holds in some tenant; tenant_roles says which where.
    roles: list[str]
    tenant_roles: dict[str, list[str]]
    is_operator: bool
    client_id: str | None = None
    expires_at: int | None = None
