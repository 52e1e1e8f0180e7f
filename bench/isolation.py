"""Isolation, the async promise: the dashboard's p99 and the event loop's lag while 8
imports run in the same Pulse process, against the same figures with the process idle.

One Pulse process in its production configuration (response cache on), except that the
watchdog logs every lag of 25 ms or more (default 100 ms), which gives an exact maximum
above that; below it the histogram's bucket bounds are all there is. Load: the summary
route (30 days) at 10 connections, then the paced users of bench/paced.py (issue #15's
dashboard figure: their p99 busy against idle). Imports: 8 ``synthetic`` sources in 8 new tenants,
backfills started together through the API (the engine runs up to 8 at once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench.dashboard import check_paths, measure_http, pulse_paths, run_paced
from bench.database import MAIN_TENANT, Dataset
from bench.ingestion import FINAL, create_tenant, drop_tenants, start_run
from bench.issuer import Issuer
from bench.metrics import lag_between, scrape_lag
from bench.profiles import Profile
from bench.servers import Server, blocked_summary, pulse

CONNECTIONS = 10
WARN_MS = 25


def _lagged(server: Server, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measure()``'s figure with the loop lag of the same window: the histogram's
    buckets, and the exact lags the watchdog logged over WARN_MS."""
    started = datetime.now(UTC)
    before = scrape_lag(server.url)
    figure = measure()
    after = scrape_lag(server.url)
    finished = datetime.now(UTC)
    figure["loop_lag"] = lag_between(before, after)
    logged = [
        float(str(record["lag_ms"]))
        for record in server.log_events("loop.lag")
        if started.isoformat() <= str(record.get("timestamp", "")).replace("Z", "+00:00")
        and str(record.get("timestamp", "")).replace("Z", "+00:00") <= finished.isoformat()
    ]
    figure["loop_lag"]["logged_over_ms"] = WARN_MS
    figure["loop_lag"]["logged_count"] = len(logged)
    figure["loop_lag"]["max_logged_ms"] = max(logged) if logged else None
    return figure


def _closed_loop(
    server: Server, paths: list[str], headers: dict[str, str], profile: Profile
) -> dict[str, Any]:
    return _lagged(
        server, lambda: measure_http(server, paths, headers, profile, connections=CONNECTIONS)
    )


def _runs(server: Server, token: str, runs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    out = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for tenant, run_id in runs:
            response = client.get(
                f"/api/v1/tenants/{tenant}/runs/{run_id}",
                headers={"Authorization": f"Bearer {token}"},
            )
            out.append(response.json())
    return out


def _statuses(server: Server, token: str, runs: list[tuple[str, str]]) -> list[str]:
    return [str(r.get("status", "?")) for r in _runs(server, token, runs)]


def _loaded(server: Server, token: str, runs: list[tuple[str, str]]) -> int:
    return sum(
        int((r.get("progress") or {}).get("rows_loaded") or 0) for r in _runs(server, token, runs)
    )


def _start_imports(
    server: Server,
    tokens: dict[str, str],
    tenants: list[str],
    profile: Profile,
) -> list[tuple[str, str]]:
    """One synthetic backfill per tenant, started together; returns once all run."""
    last = datetime.now(UTC).date() - timedelta(days=2)
    first = last - timedelta(days=profile.isolation_days - 1)
    for tenant in tenants:
        create_tenant(server, tokens["operator"], tenant)
    runs = []
    for n, tenant in enumerate(tenants):
        source = {
            "kind": "synthetic",
            "name": "bench isolation import",
            "config": {
                "seed": 7000 + n,
                "sessions_per_day": profile.isolation_sessions_per_day,
                "batch_rows": 10_000,
            },
        }
        body = {"trigger": "backfill", "start": str(first), "end": str(last)}
        runs.append((tenant, start_run(server, tokens["admin"], tenant, source, body)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = _statuses(server, tokens["admin"], runs)
        if statuses.count("running") == len(runs) or any(s in FINAL for s in statuses):
            break
        time.sleep(0.2)
    return runs


def _busy(
    server: Server,
    tokens: dict[str, str],
    runs: list[tuple[str, str]],
    measure: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """``measure()`` while the imports run, with how many ran and what they loaded."""
    running = _statuses(server, tokens["admin"], runs).count("running")
    loaded = _loaded(server, tokens["admin"], runs)
    clock = time.monotonic()
    figure = measure()
    seconds = time.monotonic() - clock
    figure["imports_running"] = [running, _statuses(server, tokens["admin"], runs).count("running")]
    figure["import_rows_per_s"] = round((_loaded(server, tokens["admin"], runs) - loaded) / seconds)
    return figure


def _finish(server: Server, token: str, runs: list[tuple[str, str]], out: dict[str, Any]) -> None:
    """Give the imports a little while to finish (their outcome is part of the story);
    the process is stopped afterwards whatever their state."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not all(
        s in FINAL for s in _statuses(server, token, runs)
    ):
        time.sleep(0.5)
    out["statuses_final"] = _statuses(server, token, runs)
    out["run_errors"] = sorted({str(r.get("error")) for r in server.log_events("run.error")})


def run(dataset: Dataset, issuer: Issuer, profile: Profile, log: Callable[[str], None]) -> Any:
    tenants = [f"bench-iso-{n}" for n in range(profile.isolation_imports)]
    asyncio.run(drop_tenants(dataset, "bench-iso"))
    viewer = issuer.token([MAIN_TENANT], role="viewer")
    tokens = {
        "admin": issuer.token(tenants, role="admin"),
        "operator": issuer.token(tenants, role="operator"),
    }
    headers = {"Authorization": f"Bearer {viewer}"}
    paths = pulse_paths("summary", dataset)
    out: dict[str, Any] = {"connections": CONNECTIONS, "imports": len(tenants)}

    def paced(server: Server) -> dict[str, Any]:
        return _lagged(server, lambda: run_paced(server, viewer, dataset, profile, log))

    try:
        with pulse(
            dataset, issuer, name="pulse-isolation", PULSE_LOOP_LAG_WARN_MS=str(WARN_MS)
        ) as server:
            check_paths(server, paths, headers)
            out["idle"] = _closed_loop(server, paths, headers, profile)
            # Issue #15's dashboard target is the paced users' p99 (one page's widgets,
            # open loop), busy against idle.
            out["paced_idle"] = paced(server)
            log(
                f"  idle: p99={out['idle']['p99']:.1f} ms,"
                f" loop lag p99<={out['idle']['loop_lag']['p99_le_ms']} ms (closed loop),"
                f" <={out['paced_idle']['loop_lag']['p99_le_ms']} ms (paced)"
            )
            runs = _start_imports(server, tokens, tenants, profile)
            out["busy"] = _busy(
                server, tokens, runs, lambda: _closed_loop(server, paths, headers, profile)
            )
            out["paced_busy"] = _busy(server, tokens, runs, lambda: paced(server))
            out["running_at_start"] = out["busy"]["imports_running"][0]
            out["running_at_end"] = out["paced_busy"]["imports_running"][1]
            log(
                f"  busy ({out['running_at_start']}->{out['running_at_end']} imports running):"
                f" p99={out['busy']['p99']:.1f} ms,"
                f" loop lag p99<={out['busy']['loop_lag']['p99_le_ms']} ms (closed loop),"
                f" <={out['paced_busy']['loop_lag']['p99_le_ms']} ms (paced),"
                f" imports {out['paced_busy']['import_rows_per_s']} rows/s"
            )
            _finish(server, tokens["admin"], runs, out)
            out["loop_blocked"] = blocked_summary(server.log_path)
        # The same imports with a database slot for each (PULSE_INGEST_DB_SLOTS): the
        # behaviour before the slots, measured in this run for comparison.
        asyncio.run(drop_tenants(dataset, "bench-iso"))
        with pulse(
            dataset,
            issuer,
            name="pulse-isolation-unbounded",
            PULSE_LOOP_LAG_WARN_MS=str(WARN_MS),
            PULSE_INGEST_DB_SLOTS=str(len(tenants)),
        ) as server:
            check_paths(server, paths, headers)
            runs = _start_imports(server, tokens, tenants, profile)
            out["paced_busy_unbounded"] = _busy(server, tokens, runs, lambda: paced(server))
            unbounded = out["paced_busy_unbounded"]
            log(
                f"  busy, {len(tenants)} database slots: paced p99={unbounded['p99']} ms,"
                f" loop lag p99<={unbounded['loop_lag']['p99_le_ms']} ms,"
                f" imports {unbounded['import_rows_per_s']} rows/s"
            )
            _finish(server, tokens["admin"], runs, {})
    finally:
        asyncio.run(drop_tenants(dataset, "bench-iso"))
    idle_p99 = out["idle"]["p99"]
    out["p99_ratio"] = round(out["busy"]["p99"] / idle_p99, 2) if idle_p99 else None
    paced_idle = out["paced_idle"].get("p99")
    for key, busy in (
        ("paced_p99_ratio", "paced_busy"),
        ("unbounded_p99_ratio", "paced_busy_unbounded"),
    ):
        value = out[busy].get("p99")
        out[key] = round(value / paced_idle, 2) if paced_idle and value is not None else None
    # Issue #15's loop targets while 8 imports run: p99 <= 5 ms, max <= 50 ms, under the
    # paced users (a dashboard's real load). Under the closed loop the loop is saturated
    # by requests alone: its lag is the request queue (the idle figure shows it).
    busy_lag = out["paced_busy"]["loop_lag"]
    out["loop_lag_targets"] = {
        "under": "paced users",
        "p99_le_ms": busy_lag.get("p99_le_ms"),
        "p99_hit": busy_lag.get("p99_le_ms") is not None and busy_lag["p99_le_ms"] <= 5,
        "max_logged_ms": busy_lag.get("max_logged_ms"),
        # Nothing logged over WARN_MS means the max stayed under it.
        "max_hit": (busy_lag.get("max_logged_ms") or 0) <= 50,
    }
    return out
