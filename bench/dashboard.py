"""Dashboard under load, and the same work through a ceiling and a peer in the same run.

* Pulse: the three widget routes over HTTP (wrk), 10/50/100 connections, cache off and on.
  "Cache off" is a Pulse process started with a response-cache TTL of one microsecond
  (the setting must be positive; there is no off switch), with requests rotating over
  distinct date windows of the same length so that concurrent identical misses, which the
  cache coalesces even at that TTL, stay rare. "Cache on" is the default TTL, warmed first.
* Ceiling: the very statements Pulse sends for each request (captured from the dashboard
  service through SQLAlchemy's cursor events) replayed through a bare asyncpg pool of the
  same size by 100 concurrent tasks, each request in one transaction: no HTTP, no Python
  work on the results.
* Peer: bench/peer.py, the summary computed per request over raw events (FastAPI).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import httpx
from sqlalchemy import event

from bench.database import MAIN_TENANT, Dataset
from bench.load import Sample, sample_from_latencies, summarise, wrk
from bench.profiles import Profile
from bench.servers import Server

ENDPOINTS = ("summary", "timeseries", "breakdown")
SPAN_DAYS = {"summary": 30, "timeseries": 90, "breakdown": 30}
MAX_WINDOWS = 30
# Pulse's pool: db_pool_size + db_max_overflow (defaults).
POOL_SIZE = 20


def windows(dataset: Dataset, span: int) -> list[tuple[date, date]]:
    """Distinct windows of ``span`` days, the newest ending on the data set's last day."""
    total = (dataset.last_day - dataset.first_day).days + 1
    count = max(1, min(MAX_WINDOWS, total - span + 1))
    out = []
    for shift in range(count):
        last = dataset.last_day - timedelta(days=shift)
        out.append((last - timedelta(days=span - 1), last))
    return out


def pulse_paths(endpoint: str, dataset: Dataset, tenant: str = MAIN_TENANT) -> list[str]:
    base = f"/api/v1/tenants/{tenant}/stats/{endpoint}"
    paths = []
    for first, last in windows(dataset, SPAN_DAYS[endpoint]):
        rng = f"date_range={first},{last}"
        if endpoint == "summary":
            paths.append(f"{base}?{rng}")
        elif endpoint == "timeseries":
            paths.append(f"{base}?metrics=users,sessions,pageviews&interval=day&{rng}")
        else:
            paths.append(f"{base}?dimension=page_path&metrics=users,pageviews&limit=10&{rng}")
    return paths


def peer_paths(dataset: Dataset) -> list[str]:
    return [
        f"/tenants/{MAIN_TENANT}/summary?start={first}&end={last}"
        for first, last in windows(dataset, SPAN_DAYS["summary"])
    ]


def check_paths(server: Server, paths: list[str], headers: dict[str, str]) -> dict[str, Any]:
    """Every path answers 200 (this also warms the cache); returns the first body's meta."""
    first: dict[str, Any] = {}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        for path in paths:
            response = client.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
            if not first:
                body = response.json()
                first = body.get("meta", {}) if isinstance(body, dict) else {}
    return first


def measure_http(
    server: Server,
    paths: list[str],
    headers: dict[str, str],
    profile: Profile,
    connections: int,
) -> dict[str, Any]:
    samples = [
        wrk(
            server.url,
            paths,
            connections=connections,
            seconds=profile.load_seconds,
            headers=headers,
        )
        for _ in range(profile.load_runs)
    ]
    return summarise(samples)


def run_pulse(
    server: Server, token: str, dataset: Dataset, profile: Profile, log: Callable[[str], None]
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    out: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        paths = pulse_paths(endpoint, dataset)
        meta = check_paths(server, paths, headers)
        out[endpoint] = {"source": meta.get("source"), "windows": len(paths), "by_clients": {}}
        for connections in profile.concurrency:
            figure = measure_http(server, paths, headers, profile, connections)
            out[endpoint]["by_clients"][str(connections)] = figure
            log(
                f"  {server.name} {endpoint} c={connections}: {figure['rps']:.0f} req/s"
                f" p50={figure['p50']:.1f} p99={figure['p99']:.1f} ms errors={figure['errors']}"
            )
    return out


def run_peer(
    server: Server, dataset: Dataset, profile: Profile, log: Callable[[str], None]
) -> dict[str, Any]:
    paths = peer_paths(dataset)
    check_paths(server, paths[:1], {})
    out: dict[str, Any] = {}
    for connections in profile.concurrency:
        figure = measure_http(server, paths, {}, profile, connections)
        out[str(connections)] = figure
        log(f"  peer summary c={connections}: {figure['rps']:.0f} req/s p99={figure['p99']:.1f} ms")
    return out


# --- ceiling ---------------------------------------------------------------------------

Statement = tuple[str, tuple[Any, ...]]


async def capture_statements(dataset: Dataset, endpoint: str) -> list[list[Statement]]:
    """The SQL (with parameters) Pulse sends for one request of each window of ``endpoint``,
    recorded from the dashboard's own service functions."""
    from app.core.db import Database
    from app.core.settings import Settings
    from app.modules.dashboard.parsing import METRICS
    from app.modules.dashboard.schemas import StatsQuery
    from app.modules.dashboard.service import resolve_query, run_normal_query, tenant_calendar
    from app.modules.events import get_data_version

    db = Database.from_settings(Settings(env="test"), dataset.url)
    recorded: list[Statement] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def _record(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _m: Any) -> None:
        if statement.strip().upper() not in ("SELECT 1", "BEGIN", "COMMIT", "ROLLBACK"):
            recorded.append((statement, tuple(parameters or ())))

    per_request: list[list[Statement]] = []
    try:
        for first, last in windows(dataset, SPAN_DAYS[endpoint]):
            rng = [str(first), str(last)]
            if endpoint == "summary":
                query = StatsQuery(metrics=list(METRICS), date_range=rng)
            elif endpoint == "timeseries":
                query = StatsQuery(
                    metrics=["users", "sessions", "pageviews"],
                    dimensions=["time:day"],
                    date_range=rng,
                    limit=10_000,
                )
            else:
                query = StatsQuery(
                    metrics=["users", "pageviews"],
                    dimensions=["page_path"],
                    date_range=rng,
                    limit=10,
                )
            recorded.clear()
            async with db.session(MAIN_TENANT) as session:
                calendar = await tenant_calendar(session, MAIN_TENANT)
                normal, zone = await resolve_query(session, MAIN_TENANT, query, calendar)
                version = await get_data_version(session, MAIN_TENANT)
                await run_normal_query(session, MAIN_TENANT, normal, zone, calendar, version)
            per_request.append(list(recorded))
    finally:
        await db.dispose()
    return per_request


async def _ceiling_run(
    pool: Any, requests: list[list[Statement]], tasks: int, seconds: float
) -> Sample:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    counter = 0

    async def worker(offset: int) -> None:
        nonlocal errors, counter
        i = offset
        while time.perf_counter() < stop_at:
            statements = requests[i % len(requests)]
            i += 7
            started = time.perf_counter()
            try:
                async with pool.acquire() as conn, conn.transaction():
                    for sql, params in statements:
                        await conn.fetch(sql, *params)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(tasks)))
    return sample_from_latencies(latencies, time.perf_counter() - started, errors)


async def run_ceiling(
    dataset: Dataset, profile: Profile, log: Callable[[str], None], tasks: int = 100
) -> dict[str, Any]:
    import asyncpg

    out: dict[str, Any] = {}
    pool = await asyncpg.create_pool(
        dataset.asyncpg_dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, command_timeout=60
    )
    try:
        for endpoint in ENDPOINTS:
            requests = await capture_statements(dataset, endpoint)
            await _ceiling_run(pool, requests, tasks, 1.0)  # warm-up: plans, buffers
            samples = [
                await _ceiling_run(pool, requests, tasks, profile.load_seconds)
                for _ in range(profile.load_runs)
            ]
            figure = summarise(samples)
            figure["statements_per_request"] = len(requests[0])
            out[endpoint] = figure
            log(
                f"  ceiling {endpoint} tasks={tasks}: {figure['rps']:.0f} req/s"
                f" p99={figure['p99']:.1f} ms"
            )
    finally:
        await pool.close()
    return out
