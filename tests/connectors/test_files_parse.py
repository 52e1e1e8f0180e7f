"""CSV records map to canonical rows the same way whichever path maps them.

``parse_chunk`` decides per file which column goes where (``RowMapper.for_columns``);
the general path (``RowMapper.__call__``) decides per value. Both must give the same
rows, rejects and line numbers.
"""

from __future__ import annotations

import csv
import io

import pytest

from app.modules.ingestion.connectors.files_parse import ParseOptions, RowMapper, parse_chunk

_AT = "2026-01-05T10:00:00Z"


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


@pytest.mark.parametrize(
    ("columns", "mapping", "records"),
    [
        # canonical columns only, empty values
        (
            ["event_name", "occurred_at", "user_id", "page_path"],
            {},
            [["page_view", _AT, "u1", ""], ["scroll", _AT, "", "/a"]],
        ),
        # extra columns become properties (empty ones are left out), a JSON column after
        (
            ["event_name", "occurred_at", "plan", "properties", "tier"],
            {},
            [["page_view", _AT, "pro", '{"a": 1}', ""], ["x", _AT, "", "", "gold"]],
        ),
        # an extra column before the JSON column (its order decides): the general path
        (
            ["plan", "event_name", "occurred_at", "properties"],
            {},
            [["pro", "page_view", _AT, '{"plan": "free"}']],
        ),
        # renamed columns, two columns mapped onto one name (the later one wins)
        (
            ["name", "ts", "uid", "user"],
            {"name": "event_name", "ts": "occurred_at", "uid": "user_id", "user": "user_id"},
            [["page_view", _AT, "u1", "u2"], ["page_view", _AT, "u1", ""]],
        ),
        # a missing event name and a bad timestamp are rejects, a short row too
        (
            ["event_name", "occurred_at"],
            {},
            [["", _AT], ["page_view", "soon"], ["page_view"], ["page_view", _AT]],
        ),
    ],
)
def test_per_file_column_mapping_gives_the_rows_of_the_general_path(
    columns: list[str], mapping: dict[str, str], records: list[list[str]]
) -> None:
    options = ParseOptions(format="csv", gzip=False, mapping=mapping)
    parsed = parse_chunk(_csv(records), options, line_offset=1, columns=columns)

    general = RowMapper(options)
    expected_rows, expected_lines, expected_rejects = [], [], []
    for line, record in enumerate(records, start=2):
        if len(record) != len(columns):
            expected_rejects.append((line, f"expected {len(columns)} columns"))
            continue
        try:
            expected_rows.append(general(dict(zip(columns, record, strict=True))))
            expected_lines.append(line)
        except ValueError as exc:
            expected_rejects.append((line, str(exc)))
    assert parsed.rows == expected_rows
    assert parsed.line_numbers == expected_lines
    assert [
        (r.line_number, r.reason[: len(reason)])
        for r, (_, reason) in zip(parsed.rejects, expected_rejects, strict=True)
    ] == expected_rejects


def test_invalid_utf8_costs_only_its_row() -> None:
    data = _csv([["page_view", _AT, "u1"]]) + b"page_view," + _AT.encode() + b",\xff\xfe\n"
    options = ParseOptions(format="csv", gzip=False)
    parsed = parse_chunk(
        data, options, line_offset=1, columns=["event_name", "occurred_at", "user_id"]
    )
    assert [row["user_id"] for row in parsed.rows] == ["u1"]
    assert [(r.line_number, r.reason) for r in parsed.rejects] == [(3, "invalid UTF-8")]
