"""Paced users: N users, each loading dashboard widgets at a steady pace (open loop).

Every user sends one request per ``interval_s`` (1 s) on its own fixed schedule - a
random phase in the first interval, then every interval - cycling through the widgets
one dashboard page loads: the summary, a daily time series and four breakdowns. A
request is sent at its scheduled instant whether or not the user's previous answer
came back (open loop), and its latency is measured from that *intended* send time, so
a server (or client) that falls behind shows up in the percentiles instead of quietly
slowing the load down (no coordinated omission). ``hey -q`` and ``wrk`` close the loop
or send in bursts; this client keeps its own schedule.

:func:`paced_users` is reusable (the isolation benchmark runs it beside imports).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from datetime import date
from typing import Any

import httpx

from bench.load import percentile

# The widgets of one dashboard page, as the widget routes take them.
PAGE_WIDGETS: dict[str, str] = {
    "summary": "summary?",
    "timeseries": "timeseries?metrics=users,sessions,pageviews&interval=day&",
    "breakdown_page": "breakdown?dimension=page_path&metrics=users,pageviews&limit=10&",
    "breakdown_country": "breakdown?dimension=country&metrics=users,sessions&limit=10&",
    "breakdown_source": "breakdown?dimension=source&metrics=users,sessions&limit=10&",
    "breakdown_device": "breakdown?dimension=device_category&metrics=users&limit=10&",
}


def page_paths(tenant: str, windows: Sequence[tuple[date, date]] | None = None) -> list[str]:
    """Every widget of the page for each window (``date_range=30d`` without windows),
    interleaved widget by widget so a user walking the list loads whole pages."""
    ranges = [f"{a},{b}" for a, b in windows] if windows else ["30d"]
    base = f"/api/v1/tenants/{tenant}/stats/"
    return [f"{base}{query}date_range={rng}" for rng in ranges for query in PAGE_WIDGETS.values()]


def _widget_of(path: str) -> str:
    return next((name for name, query in PAGE_WIDGETS.items() if query in path), "other")


async def paced_users(
    base_url: str,
    tenant: str,
    token: str,
    users: int = 100,
    seconds: float = 10.0,
    *,
    paths: Sequence[str] | None = None,
    windows: Sequence[tuple[date, date]] | None = None,
    interval_s: float = 1.0,
    timeout_s: float = 10.0,
    seed: int = 14,
) -> dict[str, Any]:
    """Run ``users`` paced users for ``seconds``; latencies in ms from the intended send.

    ``paths`` (relative to ``base_url``) default to :func:`page_paths` of ``tenant`` over
    ``windows``; user ``u`` starts at path ``u`` and walks the list, so at any moment the
    users ask for different widgets and windows. Returns the request counts, errors (by
    kind), p50/p95/p99/max overall and per widget, the achieved rate and how late the
    client itself started requests (its own scheduling lag, which the latencies include).
    """
    chosen = list(paths) if paths else page_paths(tenant, windows)
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=users * 2, max_keepalive_connections=users * 2)
    latencies: list[tuple[str, float]] = []
    lateness: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=timeout_s
    ) as client:
        tasks: set[asyncio.Task[None]] = set()

        async def one(path: str, intended: float) -> None:
            try:
                response = await client.get(path)
                kind = None if response.status_code == 200 else f"status {response.status_code}"
            except httpx.TimeoutException:
                kind = "timeout"
            except httpx.HTTPError as exc:
                kind = type(exc).__name__
            if kind is None:
                latencies.append((path, time.perf_counter() - intended))
            else:
                errors[kind] = errors.get(kind, 0) + 1

        async def user(index: int, start: float) -> None:
            nonlocal sent
            phase = rng.random() * interval_s
            k = 0
            while True:
                intended = start + phase + k * interval_s
                if intended - start >= seconds:
                    return
                delay = intended - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                lateness.append(max(0.0, time.perf_counter() - intended))
                path = chosen[(index + k) % len(chosen)]
                task = asyncio.create_task(one(path, intended))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
                k += 1

        start = time.perf_counter() + 0.2
        await asyncio.gather(*(user(u, start) for u in range(users)))
        if tasks:
            await asyncio.wait(set(tasks), timeout=timeout_s + 5)
        elapsed = time.perf_counter() - start
    ms = [lat * 1000 for _, lat in latencies]
    by_widget: dict[str, list[float]] = {}
    for path, lat in latencies:
        by_widget.setdefault(_widget_of(path), []).append(lat * 1000)
    return {
        "users": users,
        "seconds": seconds,
        "interval_s": interval_s,
        "sent": sent,
        "ok": len(ms),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "achieved_rps": round(len(ms) / elapsed, 1) if elapsed > 0 else 0.0,
        **_percentiles(ms),
        "client_lateness_p99": round(percentile([x * 1000 for x in lateness], 99), 2)
        if lateness
        else None,
        "by_widget": {name: {"n": len(v), **_percentiles(v)} for name, v in by_widget.items()},
    }


def _percentiles(ms: Sequence[float]) -> dict[str, float | None]:
    if not ms:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    return {
        "p50": round(percentile(ms, 50), 2),
        "p95": round(percentile(ms, 95), 2),
        "p99": round(percentile(ms, 99), 2),
        "max": round(max(ms), 2),
    }
