"""The stats service: one engine behind the query route, the widget routes, CSV and
the weekly digest.

:func:`run_query` validates a :class:`StatsQuery` against the tenant's calendar,
asks the event store's engine for base aggregates (rollups when they cover the
query, raw events otherwise), derives the GA4-style metrics, zero-fills time
buckets, compares with another period, orders and pages.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.timezones import load_zone
from app.modules.dashboard.parsing import (
    DateRange,
    NormalQuery,
    local_midnight,
    normalise,
    time_buckets,
)
from app.modules.dashboard.schemas import (
    Comparison,
    ErrorBound,
    MetricValue,
    StatsMeta,
    StatsQuery,
    StatsResult,
    StatsRow,
)
from app.modules.events import (
    CONFIDENCE,
    RANKABLE,
    RELATIVE_ERROR,
    AggregateResult,
    Aggregates,
    AggregateSpec,
    DataVersion,
    DistinctCount,
    GroupKey,
    RollupState,
    TopN,
    aggregate_all,
    first_event_day,
    get_data_version,
    rollup_state,
    time_grain,
)
from app.modules.tenants import get_tenant_config

log = structlog.get_logger("app.dashboard")

DISTINCT_METRICS = {
    "users": "users",
    "sessions": "sessions",
    "engaged_sessions": "engaged_sessions",
}
RATIO_METRICS = ("avg_session_duration", "views_per_session", "conversion_rate")
# The distinct counts each metric is computed from.
METRIC_NEEDS: dict[str, frozenset[str]] = {
    "users": frozenset({"users"}),
    "sessions": frozenset({"sessions"}),
    "engaged_sessions": frozenset({"engaged_sessions"}),
    "bounce_rate": frozenset({"sessions", "engaged_sessions"}),
    "avg_session_duration": frozenset({"sessions"}),
    "views_per_session": frozenset({"sessions"}),
    "conversion_rate": frozenset({"sessions", "converting_sessions"}),
}


class Lookup(enum.Enum):
    """Marks an input :func:`run_normal_query` reads from the database itself."""

    LOOKUP = "lookup"


LOOKUP = Lookup.LOOKUP
# Breakdowns whose page ends within this many rows rank candidates in SQL.
TOP_N_MAX = 1_000


@dataclass(frozen=True)
class TenantCalendar:
    timezone: str
    conversion_events: tuple[str, ...]


async def tenant_calendar(session: AsyncSession, tenant_id: str) -> TenantCalendar:
    """The tenant's default timezone and conversion events (from the tenants module)."""
    config = await get_tenant_config(session, tenant_id)
    return TenantCalendar(config.timezone, tuple(sorted(config.conversion_events)))


# The local day of a tenant's first event in a zone (given by name and as tzinfo).
FirstEventDay = Callable[[str, tzinfo], Awaitable[date | None]]


async def resolve_query(
    session: AsyncSession,
    tenant_id: str,
    query: StatsQuery,
    calendar: TenantCalendar,
    *,
    now: datetime | None = None,
) -> tuple[NormalQuery, tzinfo]:
    """Validate ``query`` and resolve its timezone, presets and comparison to dates."""

    async def first_day(zone_name: str, _zone: tzinfo) -> date | None:
        return await first_event_day(session, tenant_id, zone_name)

    return await resolve_query_with(query, calendar, first_day, now=now)


async def resolve_query_with(
    query: StatsQuery,
    calendar: TenantCalendar,
    first_event_day: FirstEventDay,
    *,
    now: datetime | None = None,
) -> tuple[NormalQuery, tzinfo]:
    """:func:`resolve_query` with the first event day from the caller (cached facts)."""
    zone_name = query.timezone or calendar.timezone
    zone = await load_zone(zone_name, field="timezone" if query.timezone else "tenant.timezone")
    today = (now or datetime.now(UTC)).astimezone(zone).date()
    first = None
    if query.date_range == "all":
        first = await first_event_day(zone_name, zone)
    return normalise(query, timezone=zone_name, today=today, first_event=first), zone


# --- metric derivation ---------------------------------------------------------------------


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def derive(metrics: Iterable[str], agg: Aggregates) -> dict[str, MetricValue]:
    """GA4-style metrics from base aggregates (definitions in docs/dashboard.md)."""
    # Ratios use the same whole numbers the response shows for their parts.
    sessions = agg.sessions.value
    engaged = min(agg.engaged_sessions.value, sessions)
    out: dict[str, MetricValue] = {}
    for metric in metrics:
        value: MetricValue
        if metric in ("events", "pageviews", "new_users", "conversions"):
            value = int(getattr(agg, metric))
        elif metric in DISTINCT_METRICS:
            count: DistinctCount = getattr(agg, DISTINCT_METRICS[metric])
            value = count.value
        elif metric == "revenue":
            value = float(agg.revenue)
        elif metric == "bounce_rate":
            rate = _ratio(engaged, sessions)
            value = None if rate is None else max(0.0, 1.0 - rate)
        elif metric == "avg_session_duration":
            value = _ratio(agg.engagement_msec / 1000, sessions)
        elif metric == "views_per_session":
            value = _ratio(agg.pageviews, sessions)
        elif metric == "conversion_rate":
            rate = _ratio(agg.converting_sessions.value, sessions)
            value = None if rate is None else min(rate, 1.0)
        else:  # pragma: no cover - parsing allows only the metrics above
            raise AssertionError(metric)
        out[metric] = value
    return out


def error_bounds(metrics: Iterable[str], approximate: bool) -> dict[str, ErrorBound]:
    """The bound of every figure that came from merged sketches."""
    if not approximate:
        return {}
    eps = RELATIVE_ERROR
    ratio_eps = 2 * eps / (1 - eps)
    out: dict[str, ErrorBound] = {}
    for metric in metrics:
        if metric in DISTINCT_METRICS:
            out[metric] = ErrorBound(
                method="hyperloglog", confidence=CONFIDENCE, relative_error=round(eps, 6)
            )
        elif metric in RATIO_METRICS:
            out[metric] = ErrorBound(
                method="hyperloglog", confidence=CONFIDENCE, relative_error=round(ratio_eps, 6)
            )
        elif metric == "bounce_rate":
            out[metric] = ErrorBound(
                method="hyperloglog", confidence=CONFIDENCE, absolute_error=round(ratio_eps, 6)
            )
    return out


def change(current: MetricValue, previous: MetricValue) -> MetricValue:
    """Relative change from ``previous`` to ``current`` (None when undefined)."""
    if current is None or previous is None or previous == 0:
        return None
    return (current - previous) / abs(previous)


# --- running -------------------------------------------------------------------------------


def _range_bounds(span: DateRange, zone: tzinfo) -> tuple[datetime, datetime]:
    start = local_midnight(span.first, zone).astimezone(UTC)
    end = local_midnight(span.last + timedelta(days=1), zone).astimezone(UTC)
    return start, end


def _offset_minutes(zone: tzinfo, start: datetime, end: datetime) -> int:
    """Minutes past the hour of the zone's offset; non-zero if any point in range has it."""
    points = [start, end, start + (end - start) / 2]
    for point in points:
        offset = point.astimezone(zone).utcoffset() or timedelta(0)
        minutes = int(offset.total_seconds() // 60) % 60
        if minutes:
            return minutes
    return 0


@dataclass(frozen=True)
class _Context:
    tenant_id: str
    zone: tzinfo
    calendar: TenantCalendar
    rollup_timezone: str | None
    rollups_current: bool


def _needs(metrics: Iterable[str]) -> frozenset[str]:
    out: frozenset[str] = frozenset()
    for metric in metrics:
        out |= METRIC_NEEDS.get(metric, frozenset())
    return out


def _top(q: NormalQuery) -> TopN | None:
    """Rank in SQL when the page is a top list of one plain dimension by one metric."""
    if len(q.dimensions) != 1 or q.time_dimension is not None:
        return None
    first, *rest = q.order_by
    if first.field not in RANKABLE or [(o.field, o.descending) for o in rest] != [
        (q.dimensions[0], False)
    ]:
        return None
    wanted = q.offset + q.limit
    if wanted > TOP_N_MAX:
        return None
    exact_rank = first.field not in DISTINCT_METRICS
    # A distinct count ranks by the sum of per-day counts, an upper bound of the true
    # figure: take spare candidates, the final order comes from the merged sketches.
    return TopN(first.field, first.descending, wanted if exact_rank else 2 * wanted + 20)


def _spec(
    ctx: _Context,
    q: NormalQuery,
    span: DateRange,
    group_by: tuple[str, ...],
    top: TopN | None = None,
) -> AggregateSpec:
    start, end = _range_bounds(span, ctx.zone)
    return AggregateSpec(
        tenant_id=ctx.tenant_id,
        start=start,
        end=end,
        timezone=q.timezone,
        group_by=group_by,
        filters=q.filters,
        conversion_events=ctx.calendar.conversion_events,
        offset_minutes=_offset_minutes(ctx.zone, start, end),
        rollup_timezone=ctx.rollup_timezone,
        rollups_current=ctx.rollups_current,
        needs=_needs(q.metrics),
        top=top,
    )


def _label(key: Any, zone: tzinfo) -> str:
    if isinstance(key, datetime):
        return key.astimezone(zone).isoformat()
    if isinstance(key, date):
        return key.isoformat()
    return str(key)


@dataclass
class _Period:
    """One period's aggregates, with time keys replaced by their bucket index."""

    groups: dict[GroupKey, Aggregates]
    totals: Aggregates
    labels: list[str] | None
    approximate: bool
    source: str
    total_groups: int | None = None


def _bucket_key(key: Any) -> Any:
    if isinstance(key, datetime):
        return key.astimezone(UTC)
    return key


def _period(
    ctx: _Context,
    q: NormalQuery,
    span: DateRange,
    grouped: AggregateResult | None,
    totals_result: AggregateResult,
) -> _Period:
    """One period's groups (time keys as bucket indexes, zero-filled) and totals."""
    zone = ctx.zone
    totals = totals_result.groups.get((), Aggregates())
    labels: list[str] | None = None
    groups: dict[GroupKey, Aggregates] = {}
    time_dim = q.time_dimension
    if grouped is not None:
        if time_dim is None:
            groups = grouped.groups
        else:
            position = q.dimensions.index(time_dim)
            grain = time_grain(time_dim)
            assert grain is not None
            buckets = time_buckets(grain, span, zone)
            labels = [_label(b, zone) for b in buckets]
            index = {_bucket_key(b): i for i, b in enumerate(buckets)}
            for key, agg in grouped.groups.items():
                i = index.get(_bucket_key(key[position]))
                if i is None:  # pragma: no cover - buckets cover the whole range
                    log.warning("stats.bucket_outside_range", bucket=str(key[position]))
                    continue
                groups[(*key[:position], i, *key[position + 1 :])] = agg
            if len(q.dimensions) == 1:
                # Zero-fill: every bucket of the range is a row.
                for i in range(len(buckets)):
                    groups.setdefault((i,), Aggregates())
    sources = {totals_result.source} | ({grouped.source} if grouped else set())
    return _Period(
        groups=groups,
        totals=totals,
        labels=labels,
        approximate="rollups" in sources,
        source=sources.pop() if len(sources) == 1 else "mixed",
        total_groups=grouped.total_groups if grouped else None,
    )


async def _run_periods(
    session: AsyncSession, ctx: _Context, q: NormalQuery
) -> tuple[_Period, _Period | None]:
    """The current period and the comparison period, from ONE statement.

    Parts: [grouped,] totals for the current period, then the same for the comparison
    period, whose groups are limited to the current period's ranked rows when the
    current period is a top list (only those rows are shown).
    """
    spans = [q.date_range] + ([q.compare] if q.compare else [])
    specs: list[AggregateSpec] = []
    within: dict[int, int] = {}
    layout: list[tuple[int | None, int]] = []
    top = _top(q)
    for n, span in enumerate(spans):
        grouped_at: int | None = None
        if q.dimensions:
            grouped_at = len(specs)
            specs.append(_spec(ctx, q, span, q.dimensions, top if n == 0 else None))
            if n > 0 and top is not None and layout[0][0] is not None:
                within[grouped_at] = layout[0][0]
        layout.append((grouped_at, len(specs)))
        specs.append(_spec(ctx, q, span, ()))
    results = await aggregate_all(session, specs, within=within)
    periods = [
        _period(ctx, q, span, results[g] if g is not None else None, results[t])
        for span, (g, t) in zip(spans, layout, strict=True)
    ]
    return periods[0], (periods[1] if len(periods) > 1 else None)


def _sort_rows(rows: list[tuple[GroupKey, StatsRow]], q: NormalQuery) -> None:
    """Stable multi-key sort; None sorts last whatever the direction."""
    for order in reversed(q.order_by):
        if order.field in q.dimensions:
            position = q.dimensions.index(order.field)

            def dim_key(item: tuple[GroupKey, StatsRow], p: int = position) -> Any:
                return item[0][p]

            rows.sort(key=dim_key, reverse=order.descending)
        else:
            present = [r for r in rows if r[1].metrics.get(order.field) is not None]
            missing = [r for r in rows if r[1].metrics.get(order.field) is None]
            present.sort(
                key=lambda item, f=order.field: item[1].metrics[f],  # type: ignore[misc]
                reverse=order.descending,
            )
            rows[:] = present + missing


async def run_query(
    session: AsyncSession,
    tenant_id: str,
    query: StatsQuery,
    *,
    now: datetime | None = None,
    data_version: DataVersion | None = None,
) -> StatsResult:
    """Answer a stats query for one tenant (raises ``Invalid`` naming a bad field)."""
    calendar = await tenant_calendar(session, tenant_id)
    q, zone = await resolve_query(session, tenant_id, query, calendar, now=now)
    return await run_normal_query(session, tenant_id, q, zone, calendar, data_version)


async def run_normal_query(
    session: AsyncSession,
    tenant_id: str,
    q: NormalQuery,
    zone: tzinfo,
    calendar: TenantCalendar,
    data_version: DataVersion | None = None,
    *,
    rollups: RollupState | Lookup | None = LOOKUP,
) -> StatsResult:
    """Answer a resolved query: one statement to the database for the aggregates.

    ``data_version`` and ``rollups`` (the tenant's rollup state, None when none are
    built) are looked up when not passed in; a caller holding them in memory passes
    them and the widget costs exactly one statement.
    """
    version = data_version or await get_data_version(session, tenant_id)
    built = await rollup_state(session, tenant_id) if rollups is LOOKUP else rollups
    ctx = _Context(
        tenant_id,
        zone,
        calendar,
        rollup_timezone=built.timezone if built else None,
        # Rollups built with other conversion events are not used until rebuilt.
        rollups_current=built is None or built.conversion_events == calendar.conversion_events,
    )
    current, previous = await _run_periods(session, ctx, q)
    labels = current.labels
    rows: list[tuple[GroupKey, StatsRow]] = []
    for key, agg in current.groups.items():
        dims = {
            name: (labels[key[i]] if labels is not None and name.startswith("time:") else key[i])
            for i, name in enumerate(q.dimensions)
        }
        row = StatsRow(dimensions=dims, metrics=derive(q.metrics, agg))
        if previous is not None:
            before = derive(q.metrics, previous.groups.get(key, Aggregates()))
            row.comparison = before
            row.change = {m: change(row.metrics[m], before[m]) for m in q.metrics}
        rows.append((key, row))
    _sort_rows(rows, q)
    page = [row for _, row in rows[q.offset : q.offset + q.limit]]
    totals = derive(q.metrics, current.totals)
    comparison = None
    if previous is not None and q.compare is not None:
        before_totals = derive(q.metrics, previous.totals)
        comparison = Comparison(
            date_range=q.compare.as_list(),
            totals=before_totals,
            change={m: change(totals[m], before_totals[m]) for m in q.metrics},
        )
    approximate = current.approximate or (previous is not None and previous.approximate)
    sources = {current.source} | ({previous.source} if previous else set())
    return StatsResult(
        query=q.describe(),
        rows=page,
        totals=totals,
        comparison=comparison,
        meta=StatsMeta(
            timezone=q.timezone,
            date_range=q.date_range.as_list(),
            compare_range=q.compare.as_list() if q.compare else None,
            time_labels=labels,
            total_rows=current.total_groups if current.total_groups is not None else len(rows),
            source=sources.pop() if len(sources) == 1 else "mixed",
            fresh_until=version.fresh_until.isoformat() if version.fresh_until else None,
            data_version=version.version,
            cached=False,
            approximate=error_bounds(q.metrics, approximate),
        ),
    )
