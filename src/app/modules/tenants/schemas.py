"""Tenant request and response schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from app.core.validation import Text

TENANT_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
TenantId = Annotated[
    str,
    msgspec.Meta(
        pattern=TENANT_ID_PATTERN,
        max_length=63,
        description="A slug: lowercase letters, digits and inner hyphens, at most 63 characters.",
        examples=["acme"],
    ),
]
Name = Annotated[Text, msgspec.Meta(min_length=1, max_length=200, examples=["Acme Inc"])]
TimeZone = Annotated[
    Text,
    msgspec.Meta(min_length=1, max_length=64, description="IANA name", examples=["Europe/Berlin"]),
]
EventName = Annotated[Text, msgspec.Meta(min_length=1, max_length=200)]
DEFAULT_CONVERSION_EVENTS = ("purchase",)


class TenantSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per-tenant product settings."""

    conversion_events: Annotated[list[EventName], msgspec.Meta(min_length=1, max_length=100)] = (
        msgspec.field(default_factory=lambda: list(DEFAULT_CONVERSION_EVENTS))
    )


class TenantCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: TenantId
    name: Name
    timezone: TimeZone = "UTC"
    settings: TenantSettings = msgspec.field(default_factory=TenantSettings)


class TenantUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fields to change; the ones left out stay as they are."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    timezone: TimeZone | msgspec.UnsetType = msgspec.UNSET
    settings: TenantSettings | msgspec.UnsetType = msgspec.UNSET


class Tenant(msgspec.Struct, kw_only=True):
    id: str
    name: str
    timezone: str
    settings: TenantSettings
    created_at: datetime
    updated_at: datetime


class TenantPage(msgspec.Struct, kw_only=True):
    items: list[Tenant]
    next_cursor: str | None = None


class TenantConfig(msgspec.Struct, kw_only=True, frozen=True):
    """What other modules need to know about a tenant to compute and present its data."""

    tenant_id: str
    timezone: str
    conversion_events: tuple[str, ...]
