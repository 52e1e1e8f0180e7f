"""CSV export of a stats result, streamed row by row.

Spreadsheets execute cells that start with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return (CSV/formula injection). Every text cell that does is prefixed with
a single quote; numbers are written as numbers, a whole number without a decimal
point whether it was computed now or decoded from a cached JSON answer (where every
metric is a JSON number and decodes as a float).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from app.modules.dashboard.schemas import StatsResult

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
# Rows encoded per chunk sent to the client.
_ROWS_PER_CHUNK = 500


def neutralise(value: Any) -> Any:
    """A cell value that a spreadsheet shows as text, never evaluates."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_header(result: StatsResult) -> list[str]:
    dims: list[str] = result.query["dimensions"]
    metrics: list[str] = result.query["metrics"]
    header = [*dims, *metrics]
    if result.comparison is not None:
        header += [f"{m}_comparison" for m in metrics]
        header += [f"{m}_change" for m in metrics]
    return header


def csv_chunks(result: StatsResult) -> Iterator[str]:
    """The CSV text of ``result`` in chunks: a header, then the rows."""
    dims: list[str] = result.query["dimensions"]
    metrics: list[str] = result.query["metrics"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([neutralise(h) for h in csv_header(result)])
    for i, row in enumerate(result.rows, start=1):
        cells: list[Any] = [row.dimensions.get(d) for d in dims]
        cells += [row.metrics.get(m) for m in metrics]
        if result.comparison is not None:
            cells += [(row.comparison or {}).get(m) for m in metrics]
            cells += [(row.change or {}).get(m) for m in metrics]
        writer.writerow([neutralise(c) for c in cells])
        if i % _ROWS_PER_CHUNK == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
