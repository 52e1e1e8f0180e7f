"""Metrics, event-loop watchdog, request ids and the OpenAPI document."""

from __future__ import annotations

import asyncio
import time

import httpx
import uvloop
from litestar import Litestar
from prometheus_client import CollectorRegistry, Histogram

from app.core.watchdog import LoopWatchdog


def _busy(seconds: float) -> None:
    """Hog the loop thread with CPU work (what a runaway parser would do)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _lag_histogram() -> Histogram:
    return Histogram("lag_seconds", "lag", registry=CollectorRegistry())


async def _watch_a_blocked_loop() -> LoopWatchdog:
    watchdog = LoopWatchdog(_lag_histogram(), interval_s=0.01, warn_s=0.05)
    task = asyncio.create_task(watchdog.run())
    while watchdog.samples < 3:
        await asyncio.sleep(0.01)
    _busy(0.4)
    while watchdog.samples < 6:
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return watchdog


async def test_watchdog_measures_lag_and_names_the_blocking_code() -> None:
    watchdog = await _watch_a_blocked_loop()
    assert watchdog.max_lag_s >= 0.3
    assert watchdog.blocked_reports >= 1
    assert watchdog.last_blocked_stack is not None
    assert "_busy" in watchdog.last_blocked_stack


def _run_under_uvloop() -> LoopWatchdog:
    return uvloop.run(_watch_a_blocked_loop())


async def test_watchdog_works_under_uvloop() -> None:
    watchdog = await asyncio.to_thread(_run_under_uvloop)
    assert watchdog.max_lag_s >= 0.3
    assert watchdog.last_blocked_stack is not None
    assert "_busy" in watchdog.last_blocked_stack


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await client.get("/health/live")).status_code == 200
    await client.get("/no/such/route")
    body = (await client.get("/metrics")).text
    assert 'pulse_http_requests_total{method="GET",route="/health/live",status="200"} 3.0' in body
    assert "pulse_http_request_duration_seconds_bucket" in body
    assert "pulse_db_pool_connections_in_use" in body
    assert "pulse_db_pool_overflow" in body
    assert "pulse_event_loop_lag_seconds_count" in body


async def test_request_id_is_generated_or_echoed(client: httpx.AsyncClient) -> None:
    generated = await client.get("/health/live")
    assert len(generated.headers["x-request-id"]) == 32
    echoed = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    hostile = await client.get("/health/live", headers={"X-Request-ID": "a;b\tc" * 100})
    assert hostile.headers["x-request-id"] != "a;b\tc" * 100
    assert len(hostile.headers["x-request-id"]) == 32


async def test_every_route_documents_operation_id_tag_summary_and_errors(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    operations = [
        (path, method, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert len(operations) >= 3
    operation_ids = [op.get("operationId") for _, _, op in operations]
    assert len(set(operation_ids)) == len(operation_ids), "operation ids must be unique"
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        assert op.get("operationId"), where
        assert op.get("tags"), where
        assert op.get("summary"), where
        if path.startswith("/api/"):
            assert any(code.startswith(("4", "5")) for code in op["responses"]), where


async def test_openapi_ui_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/schema")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
