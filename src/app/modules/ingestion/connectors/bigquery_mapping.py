"""GA4 export rows -> canonical events, and the SQL that reads them.

Pure functions (no I/O), so they run in the BigQuery worker threads next to the page
fetch and are unit-tested without a server.

The query flattens the nested records BigQuery-side (``geo.country AS country``) and
returns ``event_params`` as it is; :func:`to_row` turns one result row into a
canonical row. Columns that older exports lack (``batch_event_index``,
``collected_traffic_source``, ``device.web_info``) are selected only when the table
has them, so one code path reads every export vintage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from app.modules.events.schema import event_id_for

DEFAULT_EVENT_NAMES: tuple[str, ...] = (
    "page_view",
    "session_start",
    "first_visit",
    "user_engagement",
    "scroll",
    "purchase",
)

# event_params keys that become canonical columns (the rest go to ``properties``).
_CONSUMED_PARAMS = frozenset(
    {
        "page_location",
        "page_title",
        "page_referrer",
        "engagement_time_msec",
        "session_engaged",
        "ga_session_id",
        "currency",
    }
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAILY_TABLE = re.compile(r"^events_(\d{8})$")
INTRADAY_TABLE = re.compile(r"^events_intraday_(\d{8})$")


def suffix(day: date) -> str:
    return day.strftime("%Y%m%d")


def parse_suffix(text: str) -> date | None:
    try:
        return datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def _nested(fields: Mapping[str, Any], record: str, name: str) -> bool:
    sub = fields.get(record)
    return isinstance(sub, Mapping) and name in sub


def select_list(fields: Mapping[str, Any]) -> list[str]:
    """The SELECT expressions for a table whose schema is ``fields`` (name -> sub-fields)."""
    cols = [
        "event_timestamp",
        "event_name",
        "user_pseudo_id",
        "event_bundle_sequence_id",
        "event_params",
    ]
    optional = {
        "batch_event_index": "batch_event_index",
        "country": "geo.country",
        "city": "geo.city",
        "device_category": "device.category",
        "os": "device.operating_system",
        "ts_source": "traffic_source.source",
        "ts_medium": "traffic_source.medium",
        "ts_campaign": "traffic_source.name",
        "cts_source": "collected_traffic_source.manual_source",
        "cts_medium": "collected_traffic_source.manual_medium",
        "cts_campaign": "collected_traffic_source.manual_campaign_name",
        "purchase_revenue": "ecommerce.purchase_revenue",
        "transaction_id": "ecommerce.transaction_id",
    }
    for alias, expr in optional.items():
        parts = expr.split(".")
        present = parts[0] in fields if len(parts) == 1 else _nested(fields, parts[0], parts[1])
        if present:
            cols.append(f"{expr} AS {alias}")
    device = fields.get("device")
    if isinstance(device, Mapping) and _nested(device, "web_info", "browser"):
        cols.append("device.web_info.browser AS browser")
    elif isinstance(device, Mapping) and "browser" in device:
        cols.append("device.browser AS browser")
    return cols


def build_query(project: str, dataset: str, fields: Mapping[str, Any], *, intraday: bool) -> str:
    """One parameterised query for one event name (``@event_name``) over the window.

    Daily tables cover ``@start``..``@end``; intraday tables only ``@intraday_days``, the
    days of the window that have no daily table yet, so a day is never read twice.
    """
    select = ",\n  ".join(select_list(fields))
    daily = (
        f"SELECT\n  {select}\nFROM `{project}.{dataset}.events_*`\n"
        "WHERE _TABLE_SUFFIX BETWEEN @start AND @end AND event_name = @event_name"
    )
    if not intraday:
        return daily
    return (
        f"{daily}\nUNION ALL\n"
        f"SELECT\n  {select}\nFROM `{project}.{dataset}.events_intraday_*`\n"
        "WHERE _TABLE_SUFFIX IN UNNEST(@intraday_days) AND event_name = @event_name"
    )


def schema_fields(schema: Iterable[Any]) -> dict[str, Any]:
    """``SchemaField`` list -> nested dict of names (records map to their sub-fields)."""
    out: dict[str, Any] = {}
    for field in schema:
        sub = getattr(field, "fields", ()) or ()
        out[field.name] = schema_fields(sub) if sub else True
    return out


def _param_value(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return None
    for key in ("string_value", "int_value", "double_value", "float_value"):
        found = value.get(key)
        if found is not None:
            return found
    return None


def params_of(event_params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for param in event_params or ():
        key = param.get("key") if isinstance(param, Mapping) else None
        if isinstance(key, str):
            out[key] = _param_value(param.get("value"))
    return out


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _engaged(value: Any) -> bool | None:
    if value is None:
        return None
    return str(value).strip().lower() in {"1", "true"}


def _page_path(location: Any) -> str | None:
    if not isinstance(location, str) or not location:
        return None
    parts = urlsplit(location)
    return parts.path or "/"


def _revenue(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        # Through str: a FLOAT64 like 12.3 becomes Decimal("12.3"), not its binary expansion.
        return Decimal(str(value))
    except InvalidOperation:
        return None


def to_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One GA4 result row -> one canonical row (validation is the loader's job)."""
    params = params_of(row.get("event_params"))
    user = _text(row.get("user_pseudo_id"))
    session_number = _int(params.get("ga_session_id"))
    timestamp = row.get("event_timestamp")
    occurred_at: Any = (
        _EPOCH + timedelta(microseconds=int(timestamp)) if timestamp is not None else None
    )
    if row.get("cts_source") or row.get("cts_medium") or row.get("cts_campaign"):
        source, medium, campaign = (
            row.get("cts_source"),
            row.get("cts_medium"),
            row.get("cts_campaign"),
        )
    else:
        source, medium, campaign = (
            row.get("ts_source"),
            row.get("ts_medium"),
            row.get("ts_campaign"),
        )
    properties = {k: v for k, v in params.items() if k not in _CONSUMED_PARAMS and v is not None}
    if row.get("transaction_id") and "transaction_id" not in properties:
        properties["transaction_id"] = row["transaction_id"]
    return {
        "event_id": event_id_for(
            user,
            timestamp,
            row.get("event_name"),
            session_number,
            row.get("event_bundle_sequence_id"),
            row.get("batch_event_index"),
        ),
        "event_name": row.get("event_name"),
        "occurred_at": occurred_at,
        "user_id": user,
        "session_id": f"{user}.{session_number}" if user and session_number is not None else None,
        "page_path": _page_path(params.get("page_location")),
        "page_title": _text(params.get("page_title")),
        "referrer": _text(params.get("page_referrer")),
        "source": source,
        "medium": medium,
        "campaign": campaign,
        "country": row.get("country"),
        "city": row.get("city"),
        "device_category": row.get("device_category"),
        "os": row.get("os"),
        "browser": row.get("browser"),
        "engagement_time_msec": _int(params.get("engagement_time_msec")),
        "session_engaged": _engaged(params.get("session_engaged")),
        "revenue": _revenue(row.get("purchase_revenue")),
        "currency": _text(params.get("currency")),
        "properties": properties,
    }
