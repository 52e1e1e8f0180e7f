"""Prometheus metrics: one registry per app, a request middleware and ``GET /metrics``.

A per-app registry (rather than prometheus_client's global one) keeps several
apps in one process - as the tests build them - from sharing counters.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from litestar import Response, get
from litestar.datastructures import MutableScopeHeaders, State
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """The app's metric instruments. Modules register their own on ``registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pulse_http_requests",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pulse_http_request_duration_seconds",
            "HTTP request latency by route template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "pulse_event_loop_lag_seconds",
            "How late the event loop ran a periodic timer.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self._pool_source: Callable[[], dict[str, int]] | None = None
        self.registry.register(_PoolCollector(self))

    def watch_pool(self, source: Callable[[], dict[str, int]] | None) -> None:
        self._pool_source = source

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        source = self._metrics._pool_source
        status = source() if source is not None else {"size": 0, "checked_out": 0, "overflow": 0}
        yield GaugeMetricFamily(
            "pulse_db_pool_connections_in_use",
            "Connections checked out of the pool.",
            value=status["checked_out"],
        )
        yield GaugeMetricFamily(
            "pulse_db_pool_overflow", "Connections open beyond pool_size.", value=status["overflow"]
        )
        yield GaugeMetricFamily("pulse_db_pool_size", "Configured pool size.", value=status["size"])


def request_id_for(scope: Scope) -> str:
    """The request id for ``scope``: the caller's ``X-Request-ID`` if sane, else a new one."""
    state: dict[str, Any] = scope.setdefault("state", {})
    existing = state.get("request_id")
    if existing:
        return str(existing)
    request_id = ""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                request_id = candidate
            break
    request_id = request_id or uuid.uuid4().hex
    state["request_id"] = request_id
    return request_id


def observability_middleware(metrics: Metrics) -> Callable[[ASGIApp], ASGIApp]:
    """Bind the request id to the log context, time the request, count it by route."""

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            request_id = request_id_for(scope)
            status = 500
            started = time.perf_counter()

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            with structlog.contextvars.bound_contextvars(request_id=request_id):
                try:
                    await app(scope, receive, send_wrapper)
                finally:
                    route = scope.get("path_template") or "unmatched"
                    labels = (scope.get("method", "GET"), route, str(status))
                    metrics.requests.labels(*labels).inc()
                    metrics.latency.labels(*labels).observe(time.perf_counter() - started)

        return middleware

    return factory


async def add_request_id_header(message: Message, scope: Scope) -> None:
    """``before_send`` hook: every response, matched route or not, carries X-Request-ID."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        headers["X-Request-ID"] = request_id_for(scope)


@get(
    "/metrics",
    operation_id="getMetrics",
    tags=["operations"],
    summary="Prometheus metrics",
    include_in_schema=True,
    media_type="text/plain; version=0.0.4; charset=utf-8",
    opt={"public": True},
    sync_to_thread=False,
)
def metrics_endpoint(state: State) -> Response[bytes]:
    metrics: Metrics = state.metrics
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
