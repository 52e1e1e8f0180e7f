"""The canonical event schema every connector maps its rows onto.

A row is a mapping with these field names; :func:`to_canonical` validates it and
returns a :class:`CanonicalEvent` or raises :class:`RowRejected` with a reason an
admin can read. Validation never looks at other rows, so one bad row costs only
itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import attrgetter
from typing import Any

import msgspec

MAX_TEXT = 2048
MAX_ID = 256


class CanonicalEvent(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One analytics event in Pulse's shape (see docs/ingestion.md for each field).

    ``gc=False``: not tracked by the cyclic garbage collector (an event never refers to
    itself, directly or not). Imports hold tens of thousands of them at once; tracked,
    they made every full collection walk them, stalling the event loop for up to 200 ms
    with eight imports running.
    """

    event_id: str
    event_name: str
    occurred_at: datetime
    user_id: str | None = None
    session_id: str | None = None
    page_path: str | None = None
    page_title: str | None = None
    referrer: str | None = None
    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    country: str | None = None
    city: str | None = None
    device_category: str | None = None
    os: str | None = None
    browser: str | None = None
    engagement_time_msec: int | None = None
    session_engaged: bool | None = None
    revenue: Decimal | None = None
    currency: str | None = None
    properties: dict[str, Any] = msgspec.field(default_factory=dict)


# Column order used for COPY; matches CanonicalEvent's fields.
CANONICAL_FIELDS: tuple[str, ...] = CanonicalEvent.__struct_fields__
_TEXT_FIELDS = tuple(
    f
    for f in CANONICAL_FIELDS
    if f
    not in {
        "occurred_at",
        "engagement_time_msec",
        "session_engaged",
        "revenue",
        "properties",
    }
)
_TEXT_VALUES = attrgetter(*_TEXT_FIELDS)
_REVENUE_LIMIT = Decimal("1e12")


class RowRejected(ValueError):
    """A row that cannot become an event; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def event_id_for(*parts: object) -> str:
    """A stable event id: a hash of the fields that identify an event at its source."""
    digest = hashlib.sha256("\x1f".join("" if p is None else str(p) for p in parts).encode())
    return digest.hexdigest()[:32]


def to_canonical(row: Mapping[str, Any], *, now: datetime | None = None) -> CanonicalEvent:
    """Validate one row. Without an ``event_id`` one is derived from the identifying fields."""
    if not isinstance(row, Mapping):
        raise RowRejected("row is not an object")
    if not row.get("event_id"):
        if not row.get("event_name") or not row.get("occurred_at"):
            raise RowRejected("missing event_name or occurred_at")
        row = {
            **row,
            "event_id": event_id_for(
                row.get("user_id"),
                row.get("session_id"),
                row.get("event_name"),
                row.get("occurred_at"),
                row.get("page_path"),
            ),
        }
    try:
        event = msgspec.convert(row, CanonicalEvent, strict=False)
    except msgspec.ValidationError as exc:
        raise RowRejected(str(exc).replace("Object ", "")) from None
    if not event.event_id.strip() or len(event.event_id) > MAX_ID:
        raise RowRejected(f"event_id must be 1-{MAX_ID} characters")
    if not event.event_name.strip() or len(event.event_name) > MAX_ID:
        raise RowRejected(f"event_name must be 1-{MAX_ID} characters")
    when = event.occurred_at
    if when.tzinfo is None:
        raise RowRejected("occurred_at has no timezone")
    now = now or datetime.now(UTC)
    if when.year < 1990 or when > now + timedelta(days=1):
        raise RowRejected(f"occurred_at {when.isoformat()} is out of range")
    # One C-speed look at all text fields together; the field is named only when the
    # look finds something (None joins as "None", which neither check minds).
    texts = "".join(map(str, _TEXT_VALUES(event)))
    if len(texts) > MAX_TEXT or "\x00" in texts:
        for name in _TEXT_FIELDS:
            value = getattr(event, name)
            if value is not None and (len(value) > MAX_TEXT or "\x00" in value):
                raise RowRejected(f"{name} is too long or contains NUL")
    if event.revenue is not None and not (
        event.revenue.is_finite() and abs(event.revenue) < _REVENUE_LIMIT
    ):
        raise RowRejected("revenue is not a finite amount")
    if event.engagement_time_msec is not None and not (0 <= event.engagement_time_msec < 2**62):
        raise RowRejected("engagement_time_msec is out of range")
    if event.properties and b"\\u0000" in msgspec.json.encode(event.properties):
        raise RowRejected("properties contain a NUL character")
    if when.utcoffset() != timedelta(0):
        event = msgspec.structs.replace(event, occurred_at=when.astimezone(UTC))
    return event


# --- COPY payloads (built in worker processes) -------------------------------------------

# The columns of a load, in COPY order.
LOAD_COLUMNS: tuple[str, ...] = ("tenant_id", *CANONICAL_FIELDS, "source_id")
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _escape(text: str) -> str:
    # Most values need no escaping: two scans in C instead of a translate per value.
    # isprintable() is False for tab, newline and carriage return (and for any other
    # control or unassigned character, which then just takes the translate).
    if "\\" in text or not text.isprintable():
        return text.translate(_ESCAPES)
    return text


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return _escape(msgspec.json.encode(value).decode()) if value else "{}"
    return str(value)  # int, Decimal


def _text_or_null(value: str | None) -> str:
    return "\\N" if value is None else _escape(value)


def _bool_or_null(value: bool | None) -> str:
    return "\\N" if value is None else ("t" if value else "f")


def _str_or_null(value: Any) -> str:
    return "\\N" if value is None else str(value)


# One formatter per CanonicalEvent field, in COPY order: no type tests per value.
_FORMATTERS: tuple[Any, ...] = tuple(
    {
        "occurred_at": datetime.isoformat,
        "engagement_time_msec": _str_or_null,
        "session_engaged": _bool_or_null,
        "revenue": _str_or_null,
        "properties": _copy_value,
    }.get(name, _text_or_null)
    for name in CANONICAL_FIELDS
)


def copy_line(tenant_id: str, source_id: str | None, event: CanonicalEvent) -> bytes:
    """One event as a PostgreSQL COPY text-format row in :data:`LOAD_COLUMNS` order.

    Pure CPU (runs in a worker process); the loop only hands the bytes to the driver.
    Raises ``UnicodeEncodeError`` for text that is not valid Unicode.
    """
    values = [f(v) for f, v in zip(_FORMATTERS, msgspec.structs.astuple(event), strict=True)]
    line = "\t".join((_escape(tenant_id), *values, _text_or_null(source_id)))
    return (line + "\n").encode("utf-8")
