"""Validation and normalisation of stats queries: every error names its field.

A :class:`NormalQuery` has resolved dates, a checked timezone and de-duplicated
lists; its :meth:`NormalQuery.cache_key` is the same for queries that mean the same.
"""

from __future__ import annotations

from calendar import monthrange
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Literal

import msgspec

from app.core.errors import Invalid
from app.modules.dashboard.schemas import StatsQuery
from app.modules.events import (
    DIMENSIONS,
    FILTER_OPERATORS,
    TIME_GRAINS,
    Filter,
)

METRICS: tuple[str, ...] = (
    "events",
    "pageviews",
    "users",
    "new_users",
    "sessions",
    "engaged_sessions",
    "bounce_rate",
    "avg_session_duration",
    "views_per_session",
    "conversions",
    "conversion_rate",
    "revenue",
)
PRESETS: tuple[str, ...] = (
    "today",
    "yesterday",
    "7d",
    "28d",
    "30d",
    "90d",
    "month",
    "last_month",
    "12mo",
    "year",
    "all",
)
COMPARE_MODES: tuple[str, ...] = ("previous_period", "year_over_year")
MAX_LIMIT = 10_000
MAX_OFFSET = 1_000_000
MAX_DIMENSIONS = 2
MAX_RANGE_DAYS = 3_660  # ten years
MAX_TIME_BUCKETS = 10_000
MAX_FILTERS = 20
MAX_FILTER_VALUES = 100
MAX_VALUE_LENGTH = 2048


@dataclass(frozen=True)
class DateRange:
    first: date
    last: date  # inclusive

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def as_list(self) -> list[str]:
        return [self.first.isoformat(), self.last.isoformat()]


@dataclass(frozen=True)
class OrderKey:
    field: str
    descending: bool


@dataclass(frozen=True)
class NormalQuery:
    metrics: tuple[str, ...]
    dimensions: tuple[str, ...]
    date_range: DateRange
    filters: tuple[Filter, ...]
    compare: DateRange | None
    timezone: str
    order_by: tuple[OrderKey, ...]
    limit: int
    offset: int

    @property
    def time_dimension(self) -> str | None:
        return next((d for d in self.dimensions if d.startswith("time:")), None)

    def describe(self) -> dict[str, Any]:
        return {
            "metrics": list(self.metrics),
            "dimensions": list(self.dimensions),
            "date_range": self.date_range.as_list(),
            "filters": [[f.operator, f.dimension, list(f.values)] for f in self.filters],
            "compare": self.compare.as_list() if self.compare else None,
            "timezone": self.timezone,
            "order_by": [[o.field, "desc" if o.descending else "asc"] for o in self.order_by],
            "limit": self.limit,
            "offset": self.offset,
        }

    def cache_key(self) -> str:
        return msgspec.json.encode(self.describe()).decode()


def local_midnight(day: date, zone: tzinfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone)


def _unique(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _metrics(query: StatsQuery) -> tuple[str, ...]:
    if not query.metrics:
        raise Invalid("at least one metric is required", field="metrics")
    for i, metric in enumerate(query.metrics):
        if metric not in METRICS:
            raise Invalid(
                f"unknown metric {metric!r}; one of {', '.join(METRICS)}", field=f"metrics[{i}]"
            )
    return _unique(query.metrics)


def _dimensions(query: StatsQuery) -> tuple[str, ...]:
    dims = _unique(query.dimensions)
    if len(dims) > MAX_DIMENSIONS:
        raise Invalid(f"at most {MAX_DIMENSIONS} dimensions", field="dimensions")
    for i, dim in enumerate(dims):
        if dim.startswith("time:"):
            if dim.removeprefix("time:") not in TIME_GRAINS:
                raise Invalid(
                    f"unknown time bucket {dim!r}; one of time:hour|day|week|month",
                    field=f"dimensions[{i}]",
                )
        elif dim not in DIMENSIONS:
            raise Invalid(
                f"unknown dimension {dim!r}; one of {', '.join(DIMENSIONS)} or time:<bucket>",
                field=f"dimensions[{i}]",
            )
    if sum(d.startswith("time:") for d in dims) > 1:
        raise Invalid("at most one time dimension", field="dimensions")
    return dims


def _filters(query: StatsQuery) -> tuple[Filter, ...]:
    if len(query.filters) > MAX_FILTERS:
        raise Invalid(f"at most {MAX_FILTERS} filters", field="filters")
    out: list[Filter] = []
    for i, raw in enumerate(query.filters):
        field = f"filters[{i}]"
        if len(raw) != 3:
            raise Invalid("a filter is [operator, dimension, values]", field=field)
        operator, dimension, values = raw
        if operator not in FILTER_OPERATORS:
            raise Invalid(
                f"unknown filter operator {operator!r}; one of {', '.join(FILTER_OPERATORS)}",
                field=f"{field}[0]",
            )
        if dimension not in DIMENSIONS:
            raise Invalid(f"unknown filter dimension {dimension!r}", field=f"{field}[1]")
        if isinstance(values, str):
            values = [values]
        if (
            not isinstance(values, list)
            or not values
            or len(values) > MAX_FILTER_VALUES
            or not all(isinstance(v, str) and len(v) <= MAX_VALUE_LENGTH for v in values)
        ):
            raise Invalid(f"filter values are 1-{MAX_FILTER_VALUES} strings", field=f"{field}[2]")
        out.append(Filter(operator, dimension, tuple(sorted(set(values)))))
    return tuple(sorted(out, key=lambda f: (f.dimension, f.operator, f.values)))


def _parse_date(value: object, field: str) -> date:
    if not isinstance(value, str):
        raise Invalid("dates are ISO strings YYYY-MM-DD", field=field)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise Invalid(f"{value!r} is not a date (YYYY-MM-DD)", field=field) from None


def _custom_range(value: list[str], field: str) -> DateRange:
    if len(value) != 2:
        raise Invalid("a custom range is [from, to]", field=field)
    first = _parse_date(value[0], f"{field}[0]")
    last = _parse_date(value[1], f"{field}[1]")
    if last < first:
        raise Invalid("the range ends before it starts", field=field)
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        raise Invalid(f"a range covers at most {MAX_RANGE_DAYS} days", field=field)
    return DateRange(first, last)


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return date(year, month + 1, min(day.day, monthrange(year, month + 1)[1]))


def preset_range(preset: str, today: date, first_event: date | None) -> DateRange:
    """A preset's inclusive dates; ``Nd`` means the N days ending today."""
    if preset == "today":
        return DateRange(today, today)
    if preset == "yesterday":
        day = today - timedelta(days=1)
        return DateRange(day, day)
    if preset.endswith("d"):
        return DateRange(today - timedelta(days=int(preset[:-1]) - 1), today)
    if preset == "month":
        return DateRange(today.replace(day=1), today)
    if preset == "last_month":
        last = today.replace(day=1) - timedelta(days=1)
        return DateRange(last.replace(day=1), last)
    if preset == "12mo":
        return DateRange(_add_months(today.replace(day=1), -11), today)
    if preset == "year":
        return DateRange(today.replace(month=1, day=1), today)
    if preset == "all":
        first = min(first_event, today) if first_event else today
        return DateRange(first, today)
    raise AssertionError(preset)


def _date_range(query: StatsQuery, today: date, first_event: date | None) -> DateRange:
    value = query.date_range
    if isinstance(value, list):
        return _custom_range(value, "date_range")
    if value not in PRESETS:
        raise Invalid(
            f"unknown date range {value!r}; one of {', '.join(PRESETS)} or [from, to]",
            field="date_range",
        )
    return preset_range(value, today, first_event)


def _year_back(day: date) -> date:
    return _add_months(day, -12)


def _compare(query: StatsQuery, current: DateRange) -> DateRange | None:
    value = query.compare
    if value is None:
        return None
    if isinstance(value, list):
        return _custom_range(value, "compare")
    if value == "previous_period":
        last = current.first - timedelta(days=1)
        return DateRange(last - timedelta(days=current.days - 1), last)
    if value == "year_over_year":
        return DateRange(_year_back(current.first), _year_back(current.last))
    raise Invalid(
        f"unknown comparison {value!r}; one of {', '.join(COMPARE_MODES)} or [from, to]",
        field="compare",
    )


def _order_by(
    query: StatsQuery, metrics: tuple[str, ...], dims: tuple[str, ...]
) -> tuple[OrderKey, ...]:
    keys: list[OrderKey] = []
    for i, raw in enumerate(query.order_by):
        field = f"order_by[{i}]"
        if not 1 <= len(raw) <= 2:
            raise Invalid('an order is [field, "asc"|"desc"]', field=field)
        name, direction = raw[0], (raw[1] if len(raw) == 2 else "desc")
        if name not in metrics and name not in dims:
            raise Invalid(
                f"{name!r} is neither a requested metric nor a dimension", field=f"{field}[0]"
            )
        if direction not in ("asc", "desc"):
            raise Invalid('direction is "asc" or "desc"', field=f"{field}[1]")
        keys.append(OrderKey(name, direction == "desc"))
    if not keys:
        time_dim = next((d for d in dims if d.startswith("time:")), None)
        if time_dim:
            keys.append(OrderKey(time_dim, False))
        keys.append(OrderKey(metrics[0], True))
    # Ties always break on the dimensions, so pages never overlap or reorder.
    named = {k.field for k in keys}
    keys.extend(OrderKey(d, False) for d in dims if d not in named)
    return tuple(keys)


def time_buckets(
    grain: Literal["hour", "day", "week", "month"], span: DateRange, zone: tzinfo
) -> list[Any]:
    """Every bucket key of ``span``: local dates, or UTC instants for hours."""
    if grain == "hour":
        start = local_midnight(span.first, zone).astimezone(UTC)
        end = local_midnight(span.last + timedelta(days=1), zone).astimezone(UTC)
        hours = int((end - start).total_seconds() // 3600)
        return [start + timedelta(hours=i) for i in range(hours)]
    if grain == "day":
        return [span.first + timedelta(days=i) for i in range(span.days)]
    if grain == "week":
        day = span.first - timedelta(days=span.first.weekday())
        out: list[Any] = []
        while day <= span.last:
            out.append(day)
            day += timedelta(days=7)
        return out
    month = span.first.replace(day=1)
    months: list[Any] = []
    while month <= span.last:
        months.append(month)
        month = _add_months(month, 1)
    return months


def bucket_count(grain: str, span: DateRange) -> int:
    if grain == "hour":
        return span.days * 24
    if grain == "day":
        return span.days
    if grain == "week":
        return span.days // 7 + 2
    return span.days // 28 + 2


def normalise(
    query: StatsQuery, *, timezone: str, today: date, first_event: date | None
) -> NormalQuery:
    """Check every field of ``query`` and resolve it against the tenant's calendar."""
    metrics = _metrics(query)
    dims = _dimensions(query)
    filters = _filters(query)
    span = _date_range(query, today, first_event)
    compare = _compare(query, span)
    grain = next((d.removeprefix("time:") for d in dims if d.startswith("time:")), None)
    if grain is not None:
        for name, value in (("date_range", span), ("compare", compare)):
            if value is not None and bucket_count(grain, value) > MAX_TIME_BUCKETS:
                raise Invalid(
                    f"too many {grain} buckets (at most {MAX_TIME_BUCKETS}); use a coarser "
                    "bucket or a shorter range",
                    field=name,
                )
    if not 0 <= query.limit <= MAX_LIMIT:
        raise Invalid(f"limit is between 0 and {MAX_LIMIT}", field="limit")
    if not 0 <= query.offset <= MAX_OFFSET:
        raise Invalid(f"offset is between 0 and {MAX_OFFSET}", field="offset")
    return NormalQuery(
        metrics=metrics,
        dimensions=dims,
        date_range=span,
        filters=filters,
        compare=compare,
        timezone=timezone,
        order_by=_order_by(query, metrics, dims),
        limit=query.limit,
        offset=query.offset,
    )
