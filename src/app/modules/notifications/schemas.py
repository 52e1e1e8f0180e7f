"""Request and response bodies of the notifications API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from app.core.errors import describe_format

# A deliberately plain address syntax (no display names, comments or quoted local parts):
# nothing that could carry a newline, a comma or an angle bracket into a header.
EMAIL_PATTERN = (
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+\Z"
)
describe_format(EMAIL_PATTERN, "an email address such as ops@example.com")
EmailAddress = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=254,
        pattern=EMAIL_PATTERN,
        description="An email address (plain addr-spec, no display name).",
        examples=["ops@example.com"],
    ),
]
Weekday = Annotated[int, msgspec.Meta(ge=1, le=7, description="ISO weekday: 1 = Monday.")]
Hour = Annotated[int, msgspec.Meta(ge=0, le=23, description="Hour in the tenant's timezone.")]


class Alerts(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    import_failed: bool = True
    import_succeeded: bool = False
    source_recovered: bool = True


class DigestSchedule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    weekday: Weekday = 1
    hour: Hour = 8


class NotificationSettingsUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The whole notification configuration of a tenant (PUT replaces it)."""

    recipients: Annotated[list[EmailAddress], msgspec.Meta(max_length=50)]
    alerts: Alerts = msgspec.field(default_factory=Alerts)
    digest: DigestSchedule = msgspec.field(default_factory=DigestSchedule)


class NotificationSettings(msgspec.Struct, kw_only=True):
    tenant_id: str
    recipients: list[str]
    alerts: Alerts
    digest: DigestSchedule
    timezone: str
    updated_at: datetime | None


class OutboxEntry(msgspec.Struct, kw_only=True):
    """One queued email: its status, never its body."""

    id: uuid.UUID
    kind: str
    recipient: str
    subject: str
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None


class OutboxPage(msgspec.Struct, kw_only=True):
    items: list[OutboxEntry]
    # Pass as `cursor` to get the next (older) page; null on the last page.
    next_cursor: str | None


class TestEmailQueued(msgspec.Struct, kw_only=True):
    queued: int
    recipients: list[str]
