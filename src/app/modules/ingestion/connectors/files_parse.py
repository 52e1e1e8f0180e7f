"""Parsing dropped files (CSV, JSON Lines, optionally gzipped) into canonical rows.

Runs in a worker thread over a blocking binary stream (see ``files_stream``): gzip is
decompressed incrementally (``gzip.GzipFile``), CSV goes through the ``csv`` module over
a text stream, JSON Lines through msgspec, and rows come out in batches, so memory
does not grow with the file. A row that cannot become an event is a reject with its
line number and reason; the rest of the file carries on. A stream that cannot be read
to its end (truncated gzip, corrupt data) raises :class:`UnreadableFile`.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from operator import itemgetter
from typing import IO, Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from app.modules.events.schema import CANONICAL_FIELDS
from app.modules.ingestion.connectors.base import Reject

GZIP_MAGIC = b"\x1f\x8b"
RAW_LIMIT = 2000
_EPOCH_NUMBER = re.compile(r"^\d{9,16}(\.\d+)?$")
_CANONICAL = frozenset(CANONICAL_FIELDS)


class UnreadableFile(Exception):
    """The file cannot be read to its end; nothing of it may be committed."""


@dataclass(frozen=True)
class ParseOptions:
    format: Literal["csv", "jsonl"]
    gzip: bool
    delimiter: str = ","
    header: bool = True
    columns: Sequence[str] | None = None
    mapping: Mapping[str, str] = field(default_factory=dict)
    timestamp_format: str | None = None
    timezone: str = "UTC"
    batch_rows: int = 5000


@dataclass
class ParsedBatch:
    rows: list[dict[str, Any]]
    line_numbers: list[int]
    rejects: list[Reject]


class _RowError(ValueError):
    pass


def zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UnreadableFile(f"unknown timezone {name!r}") from None


def parse_timestamp(value: Any, fmt: str | None, tz: tzinfo) -> datetime:
    """A timestamp from text (ISO 8601, epoch seconds/ms/us, or ``fmt``); naive -> ``tz``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _from_epoch(float(value))
    if not isinstance(value, str) or not value.strip():
        raise _RowError("missing occurred_at")
    text = value.strip()
    try:
        if fmt:
            when = datetime.strptime(text, fmt)
        elif _EPOCH_NUMBER.match(text):
            return _from_epoch(float(text))
        else:
            when = datetime.fromisoformat(text)
    except ValueError:
        raise _RowError(f"bad timestamp {text[:64]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return when.astimezone(UTC)


def _from_epoch(number: float) -> datetime:
    # Seconds, milliseconds or microseconds, told apart by magnitude.
    if number >= 1e14:
        number /= 1_000_000
    elif number >= 1e11:
        number /= 1000
    try:
        return datetime.fromtimestamp(number, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise _RowError(f"bad timestamp {number!r}") from None


class RowMapper:
    """Source record -> canonical row: renames, typed timestamp, the rest to properties."""

    def __init__(self, options: ParseOptions) -> None:
        self.mapping = dict(options.mapping)
        self.fmt = options.timestamp_format
        self.tz = zone(options.timezone)

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        properties: dict[str, Any] = {}
        for key, value in record.items():
            name = self.mapping.get(key, key)
            if value == "":
                value = None
            if name == "properties":
                properties.update(_properties(value))
            elif name in _CANONICAL:
                row[name] = value
            elif value is not None:
                properties[name] = value
        return self._finish(row, properties)

    def for_columns(self, columns: Sequence[str]) -> Callable[[Sequence[str]], dict[str, Any]]:
        """The mapping of CSV records with these columns (lists of strings, one per
        column): the same rows as ``self(dict(zip(columns, record)))``, with the
        per-column decisions taken once per file instead of once per value."""
        names = [self.mapping.get(c, c) for c in columns]
        last = {name: i for i, name in enumerate(names)}
        json_column = last.pop("properties", None)
        extra = [(name, i) for name, i in last.items() if name not in _CANONICAL]
        if len(last) + (json_column is not None) != len(names) or (
            json_column is not None and any(i < json_column for _, i in extra)
        ):
            # Two columns of one name, or extra columns before a JSON properties column
            # (their order decides which value wins): the general path.
            return lambda record: self(dict(zip(columns, record, strict=True)))
        canonical = [(name, i) for name, i in last.items() if name in _CANONICAL]
        canonical_names = [name for name, _ in canonical]
        extra_names = [name for name, _ in extra]
        pick_canonical = _picker([i for _, i in canonical])
        pick_extra = _picker([i for _, i in extra])

        def map_record(record: Sequence[str]) -> dict[str, Any]:
            # CSV values are strings: "" (no value) becomes None, as in __call__.
            row = {
                n: v or None for n, v in zip(canonical_names, pick_canonical(record), strict=True)
            }
            properties = {} if json_column is None else _properties(record[json_column] or None)
            properties.update(
                (n, v) for n, v in zip(extra_names, pick_extra(record), strict=True) if v
            )
            return self._finish(row, properties)

        return map_record

    def _finish(self, row: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
        if not row.get("event_name"):
            raise _RowError("missing event_name")
        row["occurred_at"] = parse_timestamp(row.get("occurred_at"), self.fmt, self.tz)
        if properties:
            row["properties"] = properties
        return row


def _picker(indexes: Sequence[int]) -> Callable[[Sequence[str]], Sequence[str]]:
    """``record -> [record[i] for i in indexes]``, in C (``itemgetter``) where it can."""
    if not indexes:
        return lambda record: ()
    if len(indexes) == 1:
        only = indexes[0]
        return lambda record: (record[only],)
    return cast(Callable[[Sequence[str]], Sequence[str]], itemgetter(*indexes))


def _properties(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            decoded = msgspec.json.decode(value)
        except msgspec.DecodeError:
            raise _RowError("properties is not a JSON object") from None
        if isinstance(decoded, dict):
            return decoded
    raise _RowError("properties is not a JSON object")


def open_stream(raw: io.RawIOBase, *, gzip_by_name: bool, detect: bool) -> tuple[IO[bytes], bool]:
    """Wrap ``raw`` in a gzip decompressor when the name or the magic bytes say so."""
    buffered = io.BufferedReader(raw)
    compressed = gzip_by_name or (detect and buffered.peek(2)[:2] == GZIP_MAGIC)
    if compressed:
        return cast(IO[bytes], gzip.GzipFile(fileobj=buffered, mode="rb")), True
    return buffered, False


def _reading(fn: Callable[[], Iterator[ParsedBatch]]) -> Iterator[ParsedBatch]:
    try:
        yield from fn()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise UnreadableFile(f"corrupt or truncated gzip data: {exc}") from None
    except csv.Error as exc:
        raise UnreadableFile(f"unreadable CSV: {exc}") from None


def parse(stream: IO[bytes], options: ParseOptions) -> Iterator[ParsedBatch]:
    """Batches of rows from a binary stream (decompressed already if it was gzip)."""
    mapper = RowMapper(options)
    if options.format == "jsonl":
        return _reading(lambda: _parse_jsonl(stream, mapper, options.batch_rows))
    return _reading(lambda: _parse_csv(stream, mapper, options))


def parse_chunk(
    data: bytes, options: ParseOptions, *, line_offset: int, columns: Sequence[str] | None
) -> ParsedBatch:
    """All rows of ``data``: whole records of a decompressed file (see ``files_stream``),
    the first of them on line ``line_offset + 1``; CSV ``columns`` from the file's header."""
    mapper = RowMapper(options)
    stream = io.BytesIO(data)
    unbounded = len(data) + 1  # one batch for the whole chunk
    if options.format == "jsonl":
        batches = _reading(lambda: _parse_jsonl(stream, mapper, unbounded, line_offset=line_offset))
    else:
        try:  # one check of the whole chunk in C instead of one per row
            data.decode("utf-8")
            checked = True
        except UnicodeDecodeError:
            checked = False
        batches = _reading(
            lambda: _parse_csv(
                stream,
                mapper,
                options,
                line_offset=line_offset,
                columns=columns,
                utf8_checked=checked,
            )
        )
    out = ParsedBatch([], [], [])
    for batch in batches:
        out.rows.extend(batch.rows)
        out.line_numbers.extend(batch.line_numbers)
        out.rejects.extend(batch.rejects)
    return out


def header_columns(line: bytes, delimiter: str) -> list[str]:
    """The column names of a CSV header record (its bytes, newline included)."""
    text = line.decode("utf-8", "surrogateescape")
    try:
        record = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
    except csv.Error as exc:
        raise UnreadableFile(f"unreadable CSV header: {exc}") from None
    return [c.strip().lstrip("\ufeff") for c in record]


def _crash(exc: Exception) -> str:
    return f"row could not be read ({type(exc).__name__}: {exc})"[:1000]


def _raw(text: str) -> str:
    return text[:RAW_LIMIT]


class _Batcher:
    def __init__(self, size: int) -> None:
        self.size = size
        self.current = ParsedBatch([], [], [])

    def row(self, row: dict[str, Any], line: int) -> ParsedBatch | None:
        self.current.rows.append(row)
        self.current.line_numbers.append(line)
        return self._full()

    def reject(self, reason: str, raw: str, line: int) -> ParsedBatch | None:
        self.current.rejects.append(Reject(reason=reason, raw=_raw(raw), line_number=line))
        return self._full()

    def _full(self) -> ParsedBatch | None:
        if len(self.current.rows) + len(self.current.rejects) >= self.size:
            return self.flush()
        return None

    def flush(self) -> ParsedBatch | None:
        batch = self.current
        self.current = ParsedBatch([], [], [])
        return batch if batch.rows or batch.rejects else None


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_csv(
    stream: IO[bytes],
    mapper: RowMapper,
    options: ParseOptions,
    *,
    line_offset: int = 0,
    columns: Sequence[str] | None = None,
    utf8_checked: bool = False,
) -> Iterator[ParsedBatch]:
    # utf8_checked: the whole input is known to be valid UTF-8 (no row check needed).
    # surrogateescape: invalid UTF-8 costs its row (detected below), not the file.
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.reader(text, delimiter=options.delimiter, strict=False)
    batcher = _Batcher(options.batch_rows)
    if columns is None and options.columns:
        columns = options.columns
    columns = list(columns) if columns is not None else None
    end_line = 0
    map_record = None if columns is None else mapper.for_columns(columns)
    for record in reader:
        start_line, end_line = line_offset + end_line + 1, reader.line_num
        if columns is None or map_record is None:
            columns = [c.strip().lstrip("\ufeff") for c in record]
            map_record = mapper.for_columns(columns)
            continue
        if not record or record == [""]:
            continue
        if len(record) != len(columns) or not (
            utf8_checked or _valid_utf8(options.delimiter.join(record))
        ):
            raw = options.delimiter.join(record)
            if not _valid_utf8(raw):
                out = batcher.reject(
                    "invalid UTF-8", raw.encode("utf-8", "replace").decode(), start_line
                )
            else:
                out = batcher.reject(
                    f"expected {len(columns)} columns, got {len(record)}", raw, start_line
                )
        else:
            try:
                out = batcher.row(map_record(record), start_line)
            except _RowError as exc:
                out = batcher.reject(str(exc), options.delimiter.join(record), start_line)
            except Exception as exc:  # a poison row costs only itself
                out = batcher.reject(_crash(exc), options.delimiter.join(record), start_line)
        if out is not None:
            yield out
    last = batcher.flush()
    if last is not None:
        yield last


def _parse_jsonl(
    stream: IO[bytes], mapper: RowMapper, size: int, *, line_offset: int = 0
) -> Iterator[ParsedBatch]:
    batcher = _Batcher(size)
    decoder = msgspec.json.Decoder()
    for number, line in enumerate(stream, start=line_offset + 1):
        stripped = line.strip()
        if not stripped:
            continue
        raw = stripped.decode("utf-8", "replace")
        try:
            record = decoder.decode(stripped)
            if not isinstance(record, dict):
                raise _RowError("line is not a JSON object")
            out = batcher.row(mapper(record), number)
        except UnicodeDecodeError:
            out = batcher.reject("invalid UTF-8", raw, number)
        except msgspec.DecodeError as exc:
            out = batcher.reject(f"invalid JSON: {exc}", raw, number)
        except _RowError as exc:
            out = batcher.reject(str(exc), raw, number)
        except Exception as exc:  # a poison row costs only itself
            out = batcher.reject(_crash(exc), raw, number)
        if out is not None:
            yield out
    last = batcher.flush()
    if last is not None:
        yield last
