from __future__ import annotations

import re

import pytest

from app.core.settings import SettingsError, load_settings
from app.modules.auth import Principal
from app.modules.auth.claims import ClaimMapping, ClaimsError

KEYCLOAK_GROUPS = r"/tenants/(?P<tenant>[^/]+)/(?P<role>[^/]+)"


def test_roles_rank_admin_over_viewer_within_a_tenant() -> None:
    admin = Principal(subject="a", tenant_roles={"acme": frozenset({"admin"})})
    assert admin.has_role("viewer", "acme")
    assert admin.has_role("admin", "acme")
    assert not admin.has_role("operator", "acme")
    assert not admin.is_operator
    assert admin.can_access("acme")
    assert not admin.can_access("beta")
    nobody = Principal(subject="n", tenant_roles={"acme": frozenset()})
    assert nobody.can_access("acme")
    assert not nobody.has_role("viewer", "acme")
    with pytest.raises(ValueError, match="unknown role"):
        admin.has_role("root", "acme")


def test_admin_of_one_tenant_is_only_a_viewer_of_another() -> None:
    caller = Principal(
        subject="c", tenant_roles={"acme": frozenset({"admin"}), "beta": frozenset({"viewer"})}
    )
    assert caller.has_role("admin", "acme")
    assert caller.has_role("viewer", "beta")
    assert not caller.has_role("admin", "beta")
    assert not caller.has_role("viewer", "gamma")
    assert caller.roles_in("beta") == frozenset({"viewer"})


def test_operator_acts_on_any_tenant() -> None:
    operator = Principal(subject="o", operator=True)
    assert operator.is_operator
    assert operator.can_access("any-tenant")
    assert operator.has_role("admin", "any-tenant")
    assert operator.has_role("operator", None)


def test_claim_mapping_reads_strings_lists_and_paths() -> None:
    mapping = ClaimMapping("org.tenants", "scope", {"pulse:read": "viewer"})
    principal = mapping.principal(
        {"sub": "s", "org": {"tenants": "acme"}, "scope": "openid pulse:read", "exp": 5}
    )
    assert principal.tenant_roles == {"acme": frozenset({"viewer"})}
    assert principal.expires_at == 5
    literal = ClaimMapping("https://pulse/tenants", "roles", {})
    assert literal.tenants({"https://pulse/tenants": ["a", "b"]}) == frozenset({"a", "b"})
    with pytest.raises(ClaimsError):
        mapping.principal({"sub": "s", "org": {"tenants": [1, 2]}})
    with pytest.raises(ClaimsError):
        mapping.principal({"sub": ""})


def test_single_tenant_shape_gives_the_roles_in_every_listed_tenant() -> None:
    mapping = ClaimMapping()
    principal = mapping.principal({"sub": "s", "tenant_id": ["acme", "beta"], "roles": ["admin"]})
    assert principal.tenant_roles == {"acme": frozenset({"admin"}), "beta": frozenset({"admin"})}


def test_tenant_map_claim_gives_roles_per_tenant() -> None:
    mapping = ClaimMapping(tenant_roles_claim="pulse_tenants")
    principal = mapping.principal(
        {"sub": "s", "pulse_tenants": {"acme": ["admin"], "beta": "viewer", "gamma": []}}
    )
    assert principal.tenant_roles == {
        "acme": frozenset({"admin"}),
        "beta": frozenset({"viewer"}),
        "gamma": frozenset(),
    }
    with pytest.raises(ClaimsError, match="must map tenant ids to roles"):
        mapping.principal({"sub": "s", "pulse_tenants": ["acme"]})
    with pytest.raises(ClaimsError):
        mapping.principal({"sub": "s", "pulse_tenants": {"acme": {"admin": True}}})


def test_keycloak_group_paths_give_roles_per_tenant() -> None:
    mapping = ClaimMapping(
        tenant_claim="",
        roles_claim="",
        groups_claim="groups",
        group_pattern=re.compile(KEYCLOAK_GROUPS),
        role_map={"pulse-admin": "admin", "pulse-viewer": "viewer"},
    )
    principal = mapping.principal(
        {
            "sub": "s",
            "groups": [
                "/tenants/acme/pulse-admin",
                "/tenants/beta/pulse-viewer",
                "/tenants/beta/admin",  # not in the role map: counts for nothing
                "/staff/admins",  # another product's group
            ],
        }
    )
    assert principal.tenant_roles == {
        "acme": frozenset({"admin"}),
        "beta": frozenset({"viewer"}),
    }


def test_colon_strings_use_the_default_group_pattern() -> None:
    settings = load_settings({"PULSE_OIDC_TENANT_GROUPS_CLAIM": "pulse"}, dotenv=None)
    mapping = ClaimMapping.from_settings(settings)
    principal = mapping.principal({"sub": "s", "pulse": ["acme:admin", "beta:viewer", "x"]})
    assert principal.tenant_roles == {"acme": frozenset({"admin"}), "beta": frozenset({"viewer"})}


def test_the_role_name_operator_grants_nothing() -> None:
    mapping = ClaimMapping(tenant_roles_claim="pulse_tenants")
    principal = mapping.principal(
        {
            "sub": "s",
            "tenant_id": "acme",
            "roles": ["operator"],
            "pulse_tenants": {"beta": ["operator"]},
        }
    )
    assert not principal.is_operator
    assert not principal.can_access("gamma")
    assert principal.tenant_roles == {"acme": frozenset(), "beta": frozenset()}


def test_operator_only_through_the_configured_claim_value_or_subject() -> None:
    mapping = ClaimMapping(
        operator_claim="realm_access.roles",
        operator_value="pulse-platform-operator",
        operator_subjects=frozenset({"svc-ops"}),
    )
    granted = {"sub": "s", "realm_access": {"roles": ["pulse-platform-operator"]}}
    assert mapping.principal(granted).is_operator
    assert mapping.principal({"sub": "svc-ops"}).is_operator
    assert not mapping.principal({"sub": "s", "realm_access": {"roles": ["operator"]}}).is_operator
    assert not ClaimMapping().principal({"sub": "s", "pulse_operator": True}).is_operator


def test_settings_refuse_operator_in_the_role_map_and_a_bad_group_pattern() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            {
                "PULSE_OIDC_ROLE_MAP": "ops=operator",
                "PULSE_OIDC_TENANT_GROUP_PATTERN": "(?P<tenant>.+)",
                "PULSE_OIDC_OPERATOR_CLAIM": "groups",
            },
            dotenv=None,
        )
    message = str(caught.value)
    assert "operator is not a tenant role" in message
    assert "(?P<role>...)" in message
    assert "PULSE_OIDC_OPERATOR_CLAIM and PULSE_OIDC_OPERATOR_VALUE go together" in message


def test_the_documented_keycloak_group_path_setup() -> None:
    # docs/auth.md, "Example: Keycloak with group paths".
    settings = load_settings(
        {
            "PULSE_OIDC_TENANT_CLAIM": "",
            "PULSE_OIDC_ROLES_CLAIM": "",
            "PULSE_OIDC_TENANT_GROUPS_CLAIM": "groups",
            "PULSE_OIDC_TENANT_GROUP_PATTERN": KEYCLOAK_GROUPS,
            "PULSE_OIDC_OPERATOR_CLAIM": "realm_access.roles",
            "PULSE_OIDC_OPERATOR_VALUE": "pulse-platform-operator",
        },
        dotenv=None,
    )
    mapping = ClaimMapping.from_settings(settings)
    claims = {
        "sub": "s",
        "groups": ["/tenants/acme/admin", "/tenants/beta/viewer", "/staff"],
        "realm_access": {"roles": ["offline_access", "default-roles-pulse"]},
    }
    caller = mapping.principal(claims)
    assert caller.tenant_roles == {"acme": frozenset({"admin"}), "beta": frozenset({"viewer"})}
    assert not caller.is_operator
    claims["realm_access"] = {"roles": ["pulse-platform-operator"]}
    assert mapping.principal(claims).is_operator


def test_the_documented_auth0_action_setup() -> None:
    # docs/auth.md, "Example: Auth0 with a namespaced claim set by an Action".
    settings = load_settings(
        {
            "PULSE_OIDC_TENANT_CLAIM": "",
            "PULSE_OIDC_ROLES_CLAIM": "",
            "PULSE_OIDC_TENANT_ROLES_CLAIM": "https://pulse.example.com/tenants",
            "PULSE_OIDC_OPERATOR_CLAIM": "https://pulse.example.com/operator",
            "PULSE_OIDC_OPERATOR_VALUE": "true",
        },
        dotenv=None,
    )
    mapping = ClaimMapping.from_settings(settings)
    claims: dict[str, object] = {
        "sub": "auth0|42",
        "https://pulse.example.com/tenants": {"acme": ["admin"], "beta": ["viewer"]},
        "tenant_id": "gamma",  # not read: the single-tenant shape is off
        "roles": ["admin"],
    }
    caller = mapping.principal(claims)
    assert caller.tenant_roles == {"acme": frozenset({"admin"}), "beta": frozenset({"viewer"})}
    assert not caller.is_operator
    claims["https://pulse.example.com/operator"] = True
    assert mapping.principal(claims).is_operator
