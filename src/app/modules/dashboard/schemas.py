"""Request and response shapes of the stats API."""

from __future__ import annotations

from typing import Any

import msgspec

# A number (integers are numbers too: `int | float` became `oneOf`, which no integer passes).
MetricValue = float | None


class StatsQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One declarative stats query (the body of ``POST .../stats/query``).

    ``date_range`` is a preset (``today``, ``yesterday``, ``7d``, ``28d``, ``30d``,
    ``90d``, ``month``, ``last_month``, ``12mo``, ``year``, ``all``) or ``[from, to]``
    ISO dates, inclusive, in ``timezone``. ``filters`` are ``[operator, dimension,
    values]`` triples AND-ed together. ``compare`` is ``previous_period``,
    ``year_over_year`` or ``[from, to]``. ``order_by`` is a list of ``[field,
    "asc"|"desc"]`` where field is a requested metric or dimension.
    """

    metrics: list[str]
    dimensions: list[str] = msgspec.field(default_factory=list)
    date_range: str | list[str] = "30d"
    filters: list[list[Any]] = msgspec.field(default_factory=list)
    compare: str | list[str] | None = None
    timezone: str | None = None
    order_by: list[list[str]] = msgspec.field(default_factory=list)
    limit: int = 1000
    offset: int = 0


class StatsRow(msgspec.Struct, kw_only=True):
    """One group: its dimension values (in the query's order) and its metrics."""

    dimensions: dict[str, str]
    metrics: dict[str, MetricValue]
    comparison: dict[str, MetricValue] | None = None
    change: dict[str, MetricValue] | None = None


class ErrorBound(msgspec.Struct, kw_only=True):
    """How far an approximate figure can be from the exact one, at ``confidence``."""

    method: str
    confidence: float
    relative_error: float | None = None
    absolute_error: float | None = None


class Comparison(msgspec.Struct, kw_only=True):
    date_range: list[str]
    totals: dict[str, MetricValue]
    change: dict[str, MetricValue]


class StatsMeta(msgspec.Struct, kw_only=True):
    timezone: str
    date_range: list[str]
    compare_range: list[str] | None
    time_labels: list[str] | None
    total_rows: int
    source: str
    fresh_until: str | None
    data_version: int
    cached: bool
    approximate: dict[str, ErrorBound]


class StatsResult(msgspec.Struct, kw_only=True):
    """The answer to a :class:`StatsQuery`."""

    query: dict[str, Any]
    rows: list[StatsRow]
    totals: dict[str, MetricValue]
    comparison: Comparison | None
    meta: StatsMeta
