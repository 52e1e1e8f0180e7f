"""Tenants: one row per company using Pulse, with its timezone and settings.

Public interface (sessions are passed in, the caller commits):
``create_tenant``, ``get_tenant``, ``list_tenants``, ``update_tenant``, ``delete_tenant``,
``tenant_exists``, ``get_tenant_config`` (timezone + conversion events),
``tenant_timezones`` (many tenants in one query) - a zone itself: ``app.core.timezones``,
schemas ``Tenant``, ``TenantCreate``, ``TenantUpdate``, ``TenantSettings``, ``TenantConfig``.

Tenant-owned tables elsewhere reference ``tenants.id`` with ``ON DELETE CASCADE``.
"""

from __future__ import annotations

from app.modules import Module
from app.modules.tenants.routes import TenantController
from app.modules.tenants.schemas import (
    DEFAULT_CONVERSION_EVENTS,
    Tenant,
    TenantConfig,
    TenantCreate,
    TenantPage,
    TenantSettings,
    TenantUpdate,
)
from app.modules.tenants.service import (
    create_tenant,
    delete_tenant,
    get_tenant,
    get_tenant_config,
    list_tenants,
    tenant_exists,
    tenant_timezones,
    update_tenant,
    validate_timezone,
)

module = Module(name="tenants", route_handlers=[TenantController])

__all__ = [
    "DEFAULT_CONVERSION_EVENTS",
    "Tenant",
    "TenantConfig",
    "TenantCreate",
    "TenantPage",
    "TenantSettings",
    "TenantUpdate",
    "create_tenant",
    "delete_tenant",
    "get_tenant",
    "get_tenant_config",
    "list_tenants",
    "module",
    "tenant_exists",
    "tenant_timezones",
    "update_tenant",
    "validate_timezone",
]
