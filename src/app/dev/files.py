"""GA4-like event files for the development SFTP drop (CSV, gzipped CSV, JSONL).

Files are generated from the ``synthetic`` source's deterministic generator, one per
day, so re-running the launcher produces byte-identical files and imports nothing twice.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from app.modules.ingestion import iter_day_events

# The CSV header maps 1:1 onto the canonical schema (see README, "Canonical event schema").
CSV_COLUMNS = (
    "event_id", "event_name", "occurred_at", "user_id", "session_id", "page_path",
    "page_title", "referrer", "source", "medium", "campaign", "country", "city",
    "device_category", "os", "browser", "engagement_time_msec", "session_engaged",
    "revenue", "currency",
)  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value))


def csv_bytes(rows: Iterable[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in CSV_COLUMNS])
    return buffer.getvalue().encode()


def jsonl_bytes(rows: Iterable[dict[str, Any]]) -> bytes:
    encoder = msgspec.json.Encoder(enc_hook=_json_default)
    return b"".join(encoder.encode(row) + b"\n" for row in rows)


def days_back(today: date, count: int) -> Iterator[date]:
    for offset in range(count - 1, -1, -1):
        yield today - timedelta(days=offset)


def write_drop_files(root: Path, *, seed: int, sessions_per_day: int, days: int) -> list[Path]:
    """Blocking: write one file per day, rotating ``csv/*.csv``, ``csv/*.csv.gz`` and
    ``jsonl/*.jsonl`` under ``root`` (a CSV source and a JSONL source read them).

    Only days that have fully passed are written, so a file never changes afterwards.
    """
    written: list[Path] = []
    today = datetime.now(UTC).date()
    for index, day in enumerate(days_back(today - timedelta(days=1), days)):
        kind = ("csv", "csv.gz", "jsonl")[index % 3]
        folder = root / ("jsonl" if kind == "jsonl" else "csv")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"events_{day:%Y%m%d}.{kind}"
        if path.exists():
            continue
        rows = list(iter_day_events(seed, day, sessions_per_day))
        if kind == "jsonl":
            payload = jsonl_bytes(rows)
        else:
            payload = csv_bytes(rows)
            if kind == "csv.gz":
                payload = gzip.compress(payload, mtime=0)
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_bytes(payload)
        partial.rename(path)
        written.append(path)
    return written
