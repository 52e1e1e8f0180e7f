"""Dashboard under load, and the same work through a ceiling and a peer in the same run.

* Pulse: the three widget routes over HTTP (wrk), 10/50/100 connections, cache off and on.
  "Cache off" is a Pulse process started with a response-cache TTL of one microsecond
  (the setting must be positive; there is no off switch), with requests rotating over
  distinct date windows of the same length so that concurrent identical misses, which the
  cache coalesces even at that TTL, stay rare. "Cache on" is the default TTL, warmed first.
  Each Pulse process also runs the paced users (bench/paced.py) and, in the full
  profile, the 10M-event tenant's 365-day summary at 10 clients.
* Ceiling: the very statements Pulse's query engine sends for each request (captured from
  ``run_normal_query`` through SQLAlchemy's cursor events) replayed through a bare asyncpg
  pool of the same size by 100 concurrent tasks, no transaction: no HTTP, no Python work
  on the results. Over HTTP (bench/ceiling_app.py, wrk): the framework ceiling (constant
  JSON), the database ceiling (one ``SELECT 1``) and the same replay.
* Statements per request: counted from PostgreSQL's own statement log while a Pulse
  process answers uncached and cached requests (:func:`count_statements`).
* Peer: bench/peer.py, the summary computed per request over raw events (FastAPI).
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvloop
from sqlalchemy import event

from bench.database import DATA_ROOT, MAIN_TENANT, SMALL_TENANT, Dataset
from bench.load import Sample, sample_from_latencies, summarise, wrk
from bench.paced import paced_users, page_paths
from bench.profiles import Profile
from bench.servers import Server, ceiling_server

ENDPOINTS = ("summary", "timeseries", "breakdown")
SPAN_DAYS = {"summary": 30, "timeseries": 90, "breakdown": 30}
MAX_WINDOWS = 30
# Pulse's pool: db_pool_size + db_max_overflow (defaults).
POOL_SIZE = 20
PACED_USERS = 100
# The 10M-event tenant's 365-day summary (full profile only).
YEAR_CLIENTS = 10


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
    out["paced"] = guarded(lambda: run_paced(server, token, dataset, profile, log), log)
    return out


def guarded(run: Callable[[], dict[str, Any]], log: Callable[[str], None]) -> dict[str, Any]:
    """A part of a phase that fails is recorded as its error; the phase's other figures stand."""
    try:
        return run()
    except Exception as exc:
        log(f"  FAILED: {exc!r}")
        return {"error": f"{type(exc).__name__}: {exc}"}


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


# --- ceilings --------------------------------------------------------------------------

Statement = tuple[str, tuple[Any, ...]]


def widget_query(endpoint: str, first: date, last: date) -> Any:
    """The StatsQuery the widget route builds for ``pulse_paths``' request."""
    from app.modules.dashboard.parsing import METRICS
    from app.modules.dashboard.schemas import StatsQuery

    rng = [str(first), str(last)]
    if endpoint == "summary":
        return StatsQuery(metrics=list(METRICS), date_range=rng)
    if endpoint == "timeseries":
        return StatsQuery(
            metrics=["users", "sessions", "pageviews"],
            dimensions=["time:day"],
            date_range=rng,
            limit=10_000,
        )
    return StatsQuery(
        metrics=["users", "pageviews"], dimensions=["page_path"], date_range=rng, limit=10
    )


async def capture_statements(
    dataset: Dataset, endpoint: str
) -> tuple[list[list[Statement]], bytes]:
    """The SQL (with parameters) Pulse's query engine sends for one uncached request of
    each window of ``endpoint``, recorded from the dashboard's own service function
    (``run_normal_query``, given the inputs the request path holds: the tenant's
    calendar, data version and rollup state), and the first answer as JSON bytes."""
    import msgspec

    from app.core.db import Database
    from app.core.settings import Settings
    from app.modules.dashboard.service import resolve_query, run_normal_query, tenant_calendar
    from app.modules.events import get_data_version
    from app.modules.events.state import rollup_state

    db = Database.from_settings(Settings(env="test"), dataset.url)
    recorded: list[Statement] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def _record(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _m: Any) -> None:
        if statement.strip().upper() not in ("SELECT 1", "BEGIN", "COMMIT", "ROLLBACK"):
            recorded.append((statement, tuple(parameters or ())))

    per_request: list[list[Statement]] = []
    body = b""
    try:
        for first, last in windows(dataset, SPAN_DAYS[endpoint]):
            query = widget_query(endpoint, first, last)
            async with db.session(MAIN_TENANT) as session:
                calendar = await tenant_calendar(session, MAIN_TENANT)
                normal, zone = await resolve_query(session, MAIN_TENANT, query, calendar)
                version = await get_data_version(session, MAIN_TENANT)
                built = await rollup_state(session, MAIN_TENANT)
                recorded.clear()
                result = await run_normal_query(
                    session, MAIN_TENANT, normal, zone, calendar, version, rollups=built
                )
            per_request.append(list(recorded))
            body = body or msgspec.json.encode(result)
    finally:
        await db.dispose()
    return per_request, body


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
                async with pool.acquire() as conn:
                    for sql, params in statements:
                        await conn.fetch(sql, *params)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(tasks)))
    return sample_from_latencies(latencies, time.perf_counter() - started, errors)


def ceiling_clients(profile: Profile) -> list[int]:
    """The HTTP ceilings are measured at 10 and 100 clients (and the profile's others)."""
    return sorted({10, 100, *profile.concurrency})


async def _http_ceiling(
    server: Server, paths: list[str], profile: Profile, log: Callable[[str], None], what: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await asyncio.to_thread(check_paths, server, paths[:1], {})
    for connections in ceiling_clients(profile):
        figure = await asyncio.to_thread(measure_http, server, paths, {}, profile, connections)
        out[str(connections)] = figure
        log(f"  {what} c={connections}: {figure['rps']:.0f} req/s p99={figure['p99']:.1f} ms")
    return out


async def run_ceiling(
    dataset: Dataset, profile: Profile, log: Callable[[str], None], tasks: int = 100
) -> dict[str, Any]:
    """Pulse's own statements replayed in-process (no HTTP) and over HTTP from a bare
    Litestar + asyncpg app; the framework and database ceilings over HTTP."""
    import asyncpg

    out: dict[str, Any] = {}
    captured: dict[str, list[list[Statement]]] = {}
    body = b""
    pool = await asyncpg.create_pool(
        dataset.asyncpg_dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, command_timeout=60
    )
    try:
        for endpoint in ENDPOINTS:
            requests, answer = await capture_statements(dataset, endpoint)
            captured[endpoint] = requests
            body = body or answer
            await _ceiling_run(pool, requests, tasks, 1.0)  # warm-up: plans, buffers
            samples = [
                await _ceiling_run(pool, requests, tasks, profile.load_seconds)
                for _ in range(profile.load_runs)
            ]
            figure = summarise(samples)
            figure["statements_per_request"] = max(len(r) for r in requests)
            out[endpoint] = figure
            log(
                f"  ceiling {endpoint} tasks={tasks}: {figure['rps']:.0f} req/s"
                f" p99={figure['p99']:.1f} ms"
            )
    finally:
        await pool.close()
    work = DATA_ROOT / "ceiling"
    work.mkdir(parents=True, exist_ok=True)
    body_path = work / "summary.json"
    body_path.write_bytes(body)
    statements_path = work / "statements.pickle"
    statements_path.write_bytes(pickle.dumps(captured))
    http: dict[str, Any] = {"body_bytes": len(body)}
    with ceiling_server("framework", body_path) as server:
        http["framework"] = await _http_ceiling(server, ["/constant"], profile, log, "framework")
    with ceiling_server("database", body_path, dataset.asyncpg_dsn) as server:
        http["database"] = await _http_ceiling(server, ["/db"], profile, log, "database")
    with ceiling_server("replay", body_path, dataset.asyncpg_dsn, statements_path) as server:
        http["replay"] = {}
        for endpoint, requests in captured.items():
            paths = [f"/replay/{endpoint}/{i}" for i in range(len(requests))]
            http["replay"][endpoint] = await _http_ceiling(
                server, paths, profile, log, f"replay {endpoint}"
            )
    out["http"] = http
    return out


# --- statements per request ----------------------------------------------------------------

_QUIET = {
    # The counting Pulse runs no background polling, so the log holds requests only.
    "PULSE_SCHEDULER_INTERVAL_S": "3600",
    "PULSE_INGEST_POLL_INTERVAL_S": "3600",
    "PULSE_NOTIFY_POLL_INTERVAL_S": "3600",
}


def _statement_kind(line: str) -> str | None:
    """The kind of a ``log_statement = all`` line, or None for other lines."""
    for marker in ("LOG:  statement: ", "LOG:  execute "):
        at = line.find(marker)
        if at >= 0:
            sql = line[at + len(marker) :]
            if marker == "LOG:  execute ":
                sql = sql.partition(": ")[2]
            word = sql.strip().rstrip(";").upper()
            # SQLAlchemy's pre-ping on asyncpg is BEGIN, an empty statement (which
            # PostgreSQL does not log) and ROLLBACK: its ROLLBACK counts as the ping.
            if word in ("BEGIN", "COMMIT"):
                return "transaction"
            if word in ("", "SELECT 1", "ROLLBACK"):
                return "ping"
            if word.startswith("SELECT SET_CONFIG('PULSE."):
                return "tenant binding"  # row-level security context (core/db.py)
            return "query"
    return None


def _count_since(log_path: Path, offset: int) -> tuple[dict[str, int], int]:
    with log_path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
        end = f.tell()
    kinds: dict[str, int] = {}
    for line in text.splitlines():
        kind = _statement_kind(line)
        if kind is not None:
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds, end


def count_statements(
    dataset: Dataset, issuer: Any, token: str, log: Callable[[str], None]
) -> dict[str, Any]:
    """Statements PostgreSQL received per request from a running Pulse process.

    A Pulse process (background polling parked) connects as its own role,
    ``bench_count``, on which PostgreSQL logs every statement (``log_statement = all``;
    nothing else uses that role, so the setting touches no other measurement). It
    answers each endpoint's windows once (uncached: first sight of each) and then again
    (cached), and the log lines written meanwhile are counted per request, split into
    queries, transaction ceremony (BEGIN/COMMIT) and pings. An idle second before each
    endpoint is counted too (should be 0). The tenant's facts are read before (one
    request on an unmeasured window): a process reads them once per tenant, not per
    request."""
    import asyncpg

    from bench.servers import pulse

    log_path = Path(getattr(dataset.server, "log", Path(dataset.server.pgdata) / "log"))

    async def create_role() -> None:
        conn = await asyncpg.connect(dataset.asyncpg_dsn)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'bench_count'")
            if not exists:
                await conn.execute("CREATE ROLE bench_count LOGIN")
            # Like the app's own role (row-level security applies, so the tenant
            # bindings are counted too); only its statements are logged.
            await conn.execute("ALTER ROLE bench_count NOSUPERUSER NOBYPASSRLS")
            await conn.execute("GRANT pulse_app TO bench_count")
            await conn.execute("ALTER ROLE bench_count SET log_statement = 'all'")
        finally:
            await conn.close()

    asyncio.run(create_role())
    url = dataset.url.replace("://postgres@", "://bench_count@", 1)
    headers = {"Authorization": f"Bearer {token}"}
    out: dict[str, Any] = {"method": "postgresql log_statement=all", "endpoints": {}}
    with (
        pulse(dataset, issuer, name="pulse-count", PULSE_DATABASE_URL=url, **_QUIET) as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=60) as client,
    ):
        # Warm the process (connections, type introspection) on the other tenant, and
        # read the main tenant's facts (timezone, conversion events, data version: once
        # per process and tenant, then kept until a change notification) with a window
        # that is not among the measured ones.
        for endpoint in ENDPOINTS:
            client.get(pulse_paths(endpoint, dataset, SMALL_TENANT)[0])
        client.get(pulse_paths(ENDPOINTS[0], dataset)[-1])
        for endpoint in ENDPOINTS:
            paths = pulse_paths(endpoint, dataset)[:10]
            figures: dict[str, Any] = {}
            offset = log_path.stat().st_size
            time.sleep(1.0)
            idle, offset = _count_since(log_path, offset)
            figures["idle_second"] = idle
            for mode in ("uncached", "cached"):
                for path in paths:
                    response = client.get(path)
                    if response.status_code != 200:
                        raise RuntimeError(f"{path}: {response.status_code}")
                kinds, offset = _count_since(log_path, offset)
                figures[mode] = {k: round(v / len(paths), 2) for k, v in kinds.items()}
                figures[mode]["total"] = round(sum(kinds.values()) / len(paths), 2)
                figures[mode]["requests"] = len(paths)
            out["endpoints"][endpoint] = figures
            log(
                f"  statements per request {endpoint}: uncached"
                f" {figures['uncached']} cached {figures['cached']}"
            )
    return out


# --- paced users and the year summary --------------------------------------------------


def run_paced(
    server: Server, token: str, dataset: Dataset, profile: Profile, log: Callable[[str], None]
) -> dict[str, Any]:
    """100 paced users over one dashboard page's widgets, rotating 30-day windows.

    Every path is requested once first, as in the closed-loop runs: that warms the cache
    (cache on) and PostgreSQL's buffers and plans (both)."""
    paths = page_paths(MAIN_TENANT, windows(dataset, 30))
    check_paths(server, paths, {"Authorization": f"Bearer {token}"})
    figure = uvloop.run(
        paced_users(
            server.url,
            MAIN_TENANT,
            token,
            users=PACED_USERS,
            seconds=max(5.0, profile.load_seconds * profile.load_runs),
            paths=paths,
        )
    )
    log(
        f"  {server.name} paced {PACED_USERS} users: p50={figure['p50']} p95={figure['p95']}"
        f" p99={figure['p99']} ms errors={figure['errors']} ({figure['achieved_rps']} req/s)"
    )
    return figure


def year_summary_paths(dataset: Dataset, tenant: str = MAIN_TENANT) -> list[str]:
    """365-day summaries ending on each of the data set's last 30 days."""
    base = f"/api/v1/tenants/{tenant}/stats/summary"
    out = []
    for shift in range(MAX_WINDOWS):
        last = dataset.last_day - timedelta(days=shift)
        out.append(f"{base}?date_range={last - timedelta(days=364)},{last}")
    return out


def run_year_summary(
    server: Server, token: str, dataset: Dataset, profile: Profile, log: Callable[[str], None]
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    paths = year_summary_paths(dataset)
    meta = check_paths(server, paths, headers)
    figure = measure_http(server, paths, headers, profile, YEAR_CLIENTS)
    figure["source"] = meta.get("source")
    log(f"  {server.name} 365-day summary c={YEAR_CLIENTS}: p99={figure['p99']:.1f} ms")
    return figure
