"""Stats API: the declarative query and the widget routes (summary, timeseries,
breakdown), as JSON or streamed CSV. Thin: parse, rate-limit, call the service."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream

from app.core.errors import Invalid, TooManyRequests, error_responses, problem
from app.core.validation import BIGINT_MAX
from app.modules.dashboard.export import csv_chunks
from app.modules.dashboard.parsing import METRICS
from app.modules.dashboard.runtime import StatsRuntime, answer_query
from app.modules.dashboard.schemas import StatsQuery, StatsResult

JSON = "application/json"

_PATH_IN_ERROR = re.compile(r"at `\$\.?([^`]*)`")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")
_RESPONSES: dict[int, ResponseSpec] = {
    200: ResponseSpec(
        data_container=StatsResult,
        description="The stats (JSON), or the rows as CSV with Accept: text/csv or format=csv",
        generate_examples=False,
    ),
    **error_responses(400, 401, 403, 404, 429, 503),
}
Format = Annotated[
    str | None,
    QueryParameter(name="format", description="csv for a CSV download", pattern="^(json|csv)$"),
]
DateRangeParam = Annotated[
    str,
    QueryParameter(
        description="A preset (30d, month, ...) or from,to dates (YYYY-MM-DD,YYYY-MM-DD)"
    ),
]
CompareParam = Annotated[
    str | None,
    QueryParameter(description="previous_period, year_over_year or from,to dates"),
]
FiltersParam = Annotated[
    str | None,
    QueryParameter(
        description='JSON list of [operator, dimension, values], e.g. [["is","country",["DE"]]]'
    ),
]
TimezoneParam = Annotated[
    str | None, QueryParameter(description="IANA timezone; default the tenant's")
]
OffsetParam = Annotated[int, QueryParameter(ge=0, le=BIGINT_MAX)]


def _field_of(message: str, key: str | None) -> str:
    match = _UNKNOWN_FIELD.search(message) or _PATH_IN_ERROR.search(message)
    if match and match.group(1):
        return match.group(1)
    return key or "body"


def bad_request(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Litestar's own 400s (body or parameter that does not decode) as problem+json
    with a ``field`` member, like every other invalid stats query."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    first: dict[str, Any] = errors[0] if errors and isinstance(errors[0], dict) else {}
    message = str(first.get("message") or exc.detail or "invalid request")
    # Anything but a validation error means the body did not decode (malformed JSON).
    is_validation = isinstance(exc, ValidationException)
    field = _field_of(message, first.get("key")) if is_validation else "body"
    extra: dict[str, Any] = {"field": field}
    if errors:
        extra["errors"] = errors
    return problem(request, 400, "Invalid request", message, extra=extra)


def _range(value: str | None) -> str | list[str] | None:
    if value is None:
        return None
    return value.split(",") if "," in value else value


def _filters(value: str | None) -> list[list[Any]]:
    if not value:
        return []
    try:
        return msgspec.json.decode(value, type=list[list[Any]])
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        raise Invalid(
            "filters is a JSON list of [operator, dimension, values]", field="filters"
        ) from None


def _metrics(value: str | None) -> list[str]:
    return [m.strip() for m in value.split(",") if m.strip()] if value else []


def _wants_csv(request: Request[Any, Any, Any], output_format: str | None) -> bool:
    if output_format is not None:
        return output_format == "csv"
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and "application/json" not in accept


async def _respond(
    request: Request[Any, Any, Any],
    runtime: StatsRuntime,
    tenant_id: str,
    query: StatsQuery,
    output_format: str | None,
) -> Response[Any]:
    decision = runtime.limiter.hit(tenant_id)
    if not decision.allowed:
        raise TooManyRequests(
            "Too many stats requests for this tenant; retry after the window resets.",
            headers=decision.headers(),
        )
    answer = await answer_query(runtime, tenant_id, query)
    headers = decision.headers()
    headers["X-Cache"] = "hit" if answer.cached else "miss"
    if _wants_csv(request, output_format):
        headers["Content-Disposition"] = f'attachment; filename="{tenant_id}-stats.csv"'
        result = answer.stats()

        def chunks() -> Iterator[str]:
            yield from csv_chunks(result)

        async def stream() -> AsyncIterator[str]:
            for chunk in chunks():
                yield chunk

        return Stream(stream(), media_type="text/csv", headers=headers)
    # Already encoded (and kept so by the cache): sent as is.
    return Response(answer.body, media_type=JSON, headers=headers)


class StatsController(Controller):
    path = "/api/v1/tenants/{tenant_id:str}/stats"
    tags = ["stats"]
    opt = {"role": "viewer"}
    exception_handlers = {ValidationException: bad_request, 400: bad_request}

    @post(
        "/query",
        operation_id="queryStats",
        summary="Run a declarative stats query (metrics, dimensions, filters, comparison)",
        status_code=200,
        responses=_RESPONSES,
    )
    async def query(
        self,
        request: Request[Any, Any, Any],
        stats_runtime: NamedDependency[StatsRuntime],
        tenant_id: FromPath[str],
        data: JSONBody[StatsQuery],
        output_format: Format = None,
    ) -> Response[Any]:
        return await _respond(request, stats_runtime, tenant_id, data, output_format)

    @get(
        "/summary",
        operation_id="statsSummary",
        summary="Every metric over a range, optionally compared with another range",
        responses=_RESPONSES,
    )
    async def summary(
        self,
        request: Request[Any, Any, Any],
        stats_runtime: NamedDependency[StatsRuntime],
        tenant_id: FromPath[str],
        date_range: DateRangeParam = "30d",
        compare: CompareParam = None,
        filters: FiltersParam = None,
        timezone: TimezoneParam = None,
        output_format: Format = None,
    ) -> Response[Any]:
        query = StatsQuery(
            metrics=list(METRICS),
            date_range=_range(date_range) or "30d",
            compare=_range(compare),
            filters=_filters(filters),
            timezone=timezone,
        )
        return await _respond(request, stats_runtime, tenant_id, query, output_format)

    @get(
        "/timeseries",
        operation_id="statsTimeseries",
        summary="Metrics per hour, day, week or month, every bucket present",
        responses=_RESPONSES,
    )
    async def timeseries(
        self,
        request: Request[Any, Any, Any],
        stats_runtime: NamedDependency[StatsRuntime],
        tenant_id: FromPath[str],
        metrics: Annotated[str, QueryParameter(description="comma-separated")] = "users,pageviews",
        interval: Annotated[str, QueryParameter(description="hour, day, week or month")] = "day",
        date_range: DateRangeParam = "30d",
        compare: CompareParam = None,
        filters: FiltersParam = None,
        timezone: TimezoneParam = None,
        output_format: Format = None,
    ) -> Response[Any]:
        query = StatsQuery(
            metrics=_metrics(metrics),
            dimensions=[f"time:{interval}"],
            date_range=_range(date_range) or "30d",
            compare=_range(compare),
            filters=_filters(filters),
            timezone=timezone,
            limit=10_000,
        )
        return await _respond(request, stats_runtime, tenant_id, query, output_format)

    @get(
        "/breakdown",
        operation_id="statsBreakdown",
        summary="Top values of one dimension by the first metric",
        responses=_RESPONSES,
    )
    async def breakdown(
        self,
        request: Request[Any, Any, Any],
        stats_runtime: NamedDependency[StatsRuntime],
        tenant_id: FromPath[str],
        dimension: Annotated[str, QueryParameter(description="e.g. page_path, country")],
        metrics: Annotated[str, QueryParameter(description="comma-separated")] = "users,pageviews",
        date_range: DateRangeParam = "30d",
        compare: CompareParam = None,
        filters: FiltersParam = None,
        timezone: TimezoneParam = None,
        limit: Annotated[int, QueryParameter(ge=0, le=BIGINT_MAX)] = 10,
        offset: OffsetParam = 0,
        output_format: Format = None,
    ) -> Response[Any]:
        query = StatsQuery(
            metrics=_metrics(metrics),
            dimensions=[dimension],
            date_range=_range(date_range) or "30d",
            compare=_range(compare),
            filters=_filters(filters),
            timezone=timezone,
            limit=limit,
            offset=offset,
        )
        return await _respond(request, stats_runtime, tenant_id, query, output_format)
