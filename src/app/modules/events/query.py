"""The query engine over events and their rollups.

The dashboard resolves a user's query (dates, timezone, presets) into an
:class:`AggregateSpec` - a half-open UTC interval, at most two groupings, AND-ed
filters - and calls :func:`aggregate_all` with every aggregation a widget needs (its
groups, its totals, both again for a comparison period), which sends them to
PostgreSQL as ONE statement (:mod:`app.modules.events.widget_sql`). The engine
answers from the rollups (``stats_rollups``, kept by :mod:`app.modules.events.rollups`)
when they cover the query - local-day rows for one dimension in the tenant's
timezone (week and month rows for the whole weeks and months of a long range, where
built: :mod:`app.modules.events.grains`), UTC-hour totals for hourly series and other
whole-hour timezones - and from
the raw ``events`` table otherwise. Both paths compute the same base aggregates with the same
definitions:

* additive, always exact: ``events``, ``pageviews``, ``new_users``, ``conversions``,
  ``engagement_msec``, ``revenue``;
* distinct counts: ``users``, ``sessions``, ``engaged_sessions``,
  ``converting_sessions`` - exact (``COUNT(DISTINCT)``) on raw events, HyperLogLog
  estimates with error bounds when merged from hourly sketches.

Every identifier in generated SQL comes from the allow-lists in
:mod:`app.modules.events.spec`; every value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.cpu import in_slices
from app.modules.events.sketches import DistinctCount, exact
from app.modules.events.sketches_merge import merge_blobs
from app.modules.events.spec import (
    AggregateResult,
    Aggregates,
    AggregateSpec,
    GroupKey,
    rollup_plan,
)
from app.modules.events.widget_sql import (
    Part,
    column_types,
    events_part,
    prefixed,
    ranked_top,
    rollup_part,
    statement_text,
    totals_companion,
)

__all__ = ["aggregate", "aggregate_all", "first_event_day"]


async def aggregate_all(
    session: AsyncSession,
    specs: Sequence[AggregateSpec],
    *,
    within: Mapping[int, int] | None = None,
) -> list[AggregateResult]:
    """Aggregate every spec in ONE statement, from rollups where they cover it.

    ``within`` maps a part to a ranked part (one with ``top``) on the same dimension:
    its groups are limited to the groups the ranked part returns (a comparison period
    needs figures only for the rows shown).
    """
    types = column_types(specs)
    width = len(types)
    plans = [rollup_plan(spec) for spec in specs]
    parts: dict[int, Part] = {}
    riding: set[int] = set()
    # Parts over the same range read the same week/month periods (defined once).
    periods: dict[tuple[Any, ...], str] = {}
    for i, spec in enumerate(specs):
        if i in riding:
            continue
        plan = plans[i]
        if plan is None:
            companion = totals_companion(specs, i)
            if companion is not None and companion not in riding:
                riding.add(companion)
            else:
                companion = None
            tag = str(i)
            parts[i] = events_part(
                spec, tag, str(companion) if companion is not None else None, width, types
            )
            continue
        ranked_by = (within or {}).get(i)
        limit_to = None
        if ranked_by is not None:
            other = specs[ranked_by]
            other_plan = plans[ranked_by]
            if (
                other_plan is not None
                and ranked_top(other, other_plan[1]) is not None
                and plan == other_plan
                and spec.group_by == other.group_by
            ):
                limit_to = f"rk{ranked_by}"
        parts[i] = rollup_part(spec, plan, str(i), width, types, limit_to, periods)
    ctes: list[str] = []
    selects: list[str] = []
    params: dict[str, Any] = {}
    for i, part in sorted(parts.items()):
        prefix = f"p{i}_"
        for cte in part.ctes:
            sql, bound = prefixed(cte, part.params, prefix)
            ctes.append(sql)
            params.update(bound)
        sql, bound = prefixed(part.select, part.params, prefix)
        selects.append(f"({sql})")
        params.update(bound)
    statement = ("WITH " + ",\n".join(ctes) + "\n" if ctes else "") + "\nUNION ALL\n".join(selects)
    rows = (await session.execute(statement_text(statement), params)).all()
    needs = [spec.needs for spec in specs]
    # Merging runs on the loop in short slices (threads would contend for the GIL).
    built = await in_slices(rows, lambda row: _build(row, width, needs))
    results = [AggregateResult({}, "rollups" if plan is not None else "events") for plan in plans]
    for part_index, key, agg, total_groups in built:
        result = results[part_index]
        result.groups[key[: len(specs[part_index].group_by)]] = agg
        if total_groups is not None:
            result.total_groups = int(total_groups)
    for spec, plan, result in zip(specs, plans, results, strict=True):
        if plan is None:
            continue
        if ranked_top(spec, plan[1]) is not None:
            result.total_groups = result.total_groups or 0
        if not spec.group_by:
            total = result.groups.get(())
            if total is not None and total.events == 0:
                result.groups = {}
    return results


_ZERO = exact(0)


def _merged(blobs: Sequence[bytes] | None) -> DistinctCount:
    return merge_blobs(blobs) if blobs else _ZERO


def _build(
    row: Sequence[Any], width: int, needs: Sequence[frozenset[str]]
) -> tuple[int, GroupKey, Aggregates, int | None]:
    """One result row (columns in the order every part selects them) as aggregates."""
    part = row[0]
    (
        events,
        pageviews,
        new_users,
        conversions,
        engagement_msec,
        revenue,
        users,
        sessions,
        engaged,
        converting,
        rollup_rows,
        users_exact,
        sessions_exact,
        users_hll,
        sessions_hll,
        engaged_hll,
        converting_hll,
        total_groups,
    ) = row[1 + width :]
    if users is not None:  # raw events: exact
        distinct = (exact(users), exact(sessions), exact(engaged), exact(converting))
    else:
        # A group of one rollup row has its exact users and sessions in the row.
        one_row = rollup_rows == 1
        wanted = needs[part]
        distinct = (
            exact(int(users_exact)) if one_row and "users" in wanted else _merged(users_hll),
            exact(int(sessions_exact))
            if one_row and "sessions" in wanted
            else _merged(sessions_hll),
            _merged(engaged_hll),
            _merged(converting_hll),
        )
    agg = Aggregates(
        events=int(events),
        pageviews=int(pageviews),
        new_users=int(new_users),
        conversions=int(conversions),
        engagement_msec=int(engagement_msec),
        revenue=Decimal(revenue),
        users=distinct[0],
        sessions=distinct[1],
        engaged_sessions=distinct[2],
        converting_sessions=distinct[3],
    )
    return part, tuple(row[1 : 1 + width]), agg, total_groups


async def aggregate(session: AsyncSession, spec: AggregateSpec) -> AggregateResult:
    """Aggregate the tenant's events for ``spec`` from rollups when possible."""
    return (await aggregate_all(session, [spec]))[0]


async def first_event_day(session: AsyncSession, tenant_id: str, zone: str) -> date | None:
    """The local day (in the zone named ``zone``) of the tenant's first event, from the
    hourly totals; None when the tenant has no events."""
    row = (
        await session.execute(
            statement_text(
                "SELECT (min(bucket) AT TIME ZONE :tz)::date AS first FROM stats_rollups"
                " WHERE tenant_id = :tenant_id AND grain = 0 AND dim = 0"
            ),
            {"tenant_id": tenant_id, "tz": zone},
        )
    ).one()
    first: date | None = row.first
    return first
