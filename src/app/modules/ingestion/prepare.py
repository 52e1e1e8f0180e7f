"""Per-row import work, done in worker processes (:class:`app.core.workers.WorkerPool`).

Each function here takes one bounded unit (a chunk of a file, a slice of rows) and
returns a :class:`Prepared`: the rows as PostgreSQL COPY text ready for
``copy_to_table``, their count, and the rows that could not become events with their
line and reason. Parsing, mapping, validation, canonicalisation and event-id hashing
all happen here; the app process only moves bytes. Nothing here does I/O or opens a
database connection.

A row that makes any of this fail unexpectedly (a bug, a value nobody foresaw) is
rejected with the exception's class and message rather than costing its chunk: one
poison row costs only itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from app.modules.events.schema import RowRejected, copy_line, to_canonical
from app.modules.ingestion.connectors.base import Reject
from app.modules.ingestion.connectors.bigquery_mapping import to_row
from app.modules.ingestion.connectors.files_parse import ParseOptions, parse_chunk
from app.modules.ingestion.connectors.files_stream import FileChunk

RAW_LIMIT = 4000
# Module names a fresh worker imports once (``WorkerPool(preload=...)``).
PRELOAD = ("app.modules.ingestion.prepare", "app.modules.ingestion.connectors.synthetic")


@dataclass(frozen=True)
class Prepared:
    """A unit of rows ready to load: ``copy`` holds ``rows`` COPY text-format lines."""

    copy: bytes
    rows: int
    rejects: list[Reject]
    pid: int  # the worker process that prepared it


def _raw(row: Any) -> str:
    try:
        text = msgspec.json.encode(row, enc_hook=str).decode()
    except (TypeError, ValueError, msgspec.EncodeError):  # UnicodeError is a ValueError
        text = repr(row)
    return text[:RAW_LIMIT]


def _prepare(
    tenant_id: str,
    source_id: str | None,
    rows: Sequence[Mapping[str, Any]],
    line_of: Any,
    rejects: list[Reject],
) -> Prepared:
    parts: list[bytes] = []
    now = datetime.now(UTC)  # the "not in the future" check's clock, once per unit
    for i, row in enumerate(rows):
        try:
            parts.append(copy_line(tenant_id, source_id, to_canonical(row, now=now)))
        except RowRejected as exc:
            rejects.append(Reject(exc.reason, _raw(row), line_of(i)))
        except Exception as exc:  # a poison row costs only itself
            reason = f"row could not be read ({type(exc).__name__}: {exc})"[:1000]
            rejects.append(Reject(reason, _raw(row), line_of(i)))
    return Prepared(b"".join(parts), len(parts), rejects, os.getpid())


def prepare_rows(
    tenant_id: str,
    source_id: str | None,
    rows: Sequence[Mapping[str, Any]],
    line_numbers: Sequence[int] | None,
    first_line: int | None,
) -> Prepared:
    """Validate connector rows (synthetic, BigQuery) into a COPY payload."""

    def line_of(i: int) -> int | None:
        if line_numbers is not None:
            return line_numbers[i]
        return None if first_line is None else first_line + i

    return _prepare(tenant_id, source_id, rows, line_of, [])


def prepare_ga4_rows(
    tenant_id: str, source_id: str | None, records: Sequence[Mapping[str, Any]]
) -> Prepared:
    """Map GA4 export records (a BigQuery page) to canonical rows and prepare them."""
    rows: list[Mapping[str, Any]] = []
    rejects: list[Reject] = []
    for record in records:
        try:
            rows.append(to_row(record))
        except Exception as exc:  # a poison record costs only itself
            reason = f"row could not be read ({type(exc).__name__}: {exc})"[:1000]
            rejects.append(Reject(reason, _raw(record), None))
    return _prepare(tenant_id, source_id, rows, lambda i: None, rejects)


def prepare_chunk(
    tenant_id: str, source_id: str | None, chunk: FileChunk, options: ParseOptions
) -> Prepared:
    """Parse a chunk of a file (CSV or JSON Lines records) into a COPY payload.

    Raises ``UnreadableFile`` when the chunk cannot be parsed at all.
    """
    parsed = parse_chunk(chunk.data, options, line_offset=chunk.line_offset, columns=chunk.columns)
    numbers = parsed.line_numbers
    return _prepare(tenant_id, source_id, parsed.rows, numbers.__getitem__, parsed.rejects)
