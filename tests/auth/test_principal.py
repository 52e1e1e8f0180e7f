from __future__ import annotations

import pytest

from app.modules.auth import Principal
from app.modules.auth.claims import ClaimMapping, ClaimsError


def test_roles_rank_operator_over_admin_over_viewer() -> None:
    admin = Principal(subject="a", tenants=frozenset({"acme"}), roles=frozenset({"admin"}))
    assert admin.has_role("viewer")
    assert admin.has_role("admin")
    assert not admin.has_role("operator")
    assert not admin.is_operator
    assert admin.can_access("acme")
    assert not admin.can_access("beta")
    nobody = Principal(subject="n", tenants=frozenset({"acme"}))
    assert not nobody.has_role("viewer")
    with pytest.raises(ValueError, match="unknown role"):
        admin.has_role("root")


def test_operator_acts_on_any_tenant() -> None:
    operator = Principal(subject="o", roles=frozenset({"operator"}))
    assert operator.is_operator
    assert operator.can_access("any-tenant")
    assert operator.has_role("admin")


def test_claim_mapping_reads_strings_lists_and_paths() -> None:
    mapping = ClaimMapping("org.tenants", "scope", {"pulse:read": "viewer"})
    principal = mapping.principal(
        {"sub": "s", "org": {"tenants": "acme"}, "scope": "openid pulse:read", "exp": 5}
    )
    assert principal.tenants == frozenset({"acme"})
    assert principal.roles == frozenset({"viewer"})
    assert principal.expires_at == 5
    literal = ClaimMapping("https://pulse/tenants", "roles", {})
    assert literal.tenants({"https://pulse/tenants": ["a", "b"]}) == frozenset({"a", "b"})
    with pytest.raises(ClaimsError):
        mapping.principal({"sub": "s", "org": {"tenants": [1, 2]}})
    with pytest.raises(ClaimsError):
        mapping.principal({"sub": ""})
