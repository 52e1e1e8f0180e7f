"""Request and response bodies of the ingestion API."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec

from app.core.validation import Text

SourceKind = Annotated[
    Text, msgspec.Meta(max_length=64, examples=["synthetic", "bigquery_ga4", "sftp"])
]
SourceName = Annotated[Text, msgspec.Meta(min_length=1, max_length=200)]
FilePath = Annotated[Text, msgspec.Meta(min_length=1, max_length=4096)]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
RunTrigger = Literal["scheduled", "manual", "backfill"]


class Schedule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Either a cron expression (in the tenant's timezone) or an interval in seconds."""

    cron: Annotated[Text, msgspec.Meta(max_length=200, examples=["0 3 * * *"])] | None = None
    interval_s: Annotated[int, msgspec.Meta(ge=1, le=31_622_400)] | None = None


class SourceCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    kind: SourceKind
    name: SourceName
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    # Write-only: stored encrypted, never returned.
    secrets: dict[str, Any] | None = None
    schedule: Schedule | None = None
    enabled: bool = True


class SourceUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fields left out stay as they are; ``schedule: null`` removes the schedule."""

    name: SourceName | msgspec.UnsetType = msgspec.UNSET
    config: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    secrets: dict[str, Any] | msgspec.UnsetType | None = msgspec.UNSET
    schedule: Schedule | msgspec.UnsetType | None = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class LastRun(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    status: str
    at: datetime | None
    summary: dict[str, Any] | None


class Source(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    tenant_id: str
    kind: str
    name: str
    config: dict[str, Any]
    # Names of the secrets that are set; values are never returned.
    secret_fields: list[str]
    schedule: Schedule | None
    enabled: bool
    cursor: dict[str, Any]
    last_run: LastRun | None
    consecutive_failures: int
    created_at: datetime
    updated_at: datetime


class SourceList(msgspec.Struct, kw_only=True):
    items: list[Source]


class RunCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A manual run (window optional: the source's default) or a backfill (window required)."""

    trigger: Literal["manual", "backfill"] = "manual"
    start: date | None = None
    end: date | None = None
    files: Annotated[list[FilePath], msgspec.Meta(max_length=10_000)] | None = None


class RunProgress(msgspec.Struct, kw_only=True):
    stage: str | None
    current_item: str | None
    rows_read: int
    rows_loaded: int
    rows_duplicate: int
    rows_rejected: int
    rows_quarantined: int
    bytes_read: int


class RunError(msgspec.Struct, kw_only=True):
    error_class: str | None
    message: str | None


class Run(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    tenant_id: str
    source_id: uuid.UUID
    trigger: str
    status: str
    window_start: date | None
    window_end: date | None
    files: list[str] | None
    scheduled_for: datetime | None
    attempt: int
    max_attempts: int
    next_attempt_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    cancel_requested_at: datetime | None
    progress: RunProgress
    error: RunError | None
    # The X-Request-ID of the request that queued the run (manual runs and backfills;
    # null for scheduled runs): every log line of the run carries it too.
    request_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class RunPage(msgspec.Struct, kw_only=True):
    items: list[Run]
    # Pass as `cursor` to get the next (older) page; null on the last page.
    next_cursor: str | None


class QuarantinedRow(msgspec.Struct, kw_only=True):
    item: str | None
    line_number: int | None
    reason: str
    raw: str | None
    created_at: datetime


class QuarantinePage(msgspec.Struct, kw_only=True):
    items: list[QuarantinedRow]
    # Pass as `cursor` to get the next page; null on the last page.
    next_cursor: str | None


class SourceTestCheck(msgspec.Struct, kw_only=True):
    name: str
    ok: bool
    detail: str


class SourceTestResult(msgspec.Struct, kw_only=True):
    ok: bool
    duration_ms: int
    checks: list[SourceTestCheck]
