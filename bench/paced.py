"""Paced users: N users, each loading dashboard widgets at a steady pace (open loop).

Every user sends one request per ``interval_s`` (1 s) on its own fixed schedule - a
random phase in the first interval, then every interval - cycling through the widgets
one dashboard page loads: the summary, a daily time series and four breakdowns. A
request is sent at its scheduled instant whether or not the user's previous answer
came back (open loop), and its latency is measured from that *intended* send time, so
a server (or client) that falls behind shows up in the percentiles instead of quietly
slowing the load down (no coordinated omission). ``hey -q`` and ``wrk`` close the loop
or send in bursts; this client keeps its own schedule, on a lean keep-alive HTTP/1.1
client (run it under uvloop: ``uvloop.run(paced_users(...))``).

:func:`paced_users` is reusable (the isolation benchmark runs it beside imports).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from datetime import date
from typing import Any
from urllib.parse import urlsplit

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


class _Client:
    """A lean HTTP/1.1 keep-alive client (GET only, Content-Length bodies).

    httpx spends about a millisecond of Python per request; at 100 requests a second on
    two shared cores that made the *client* late by seconds. Connections are reused
    LIFO; a reused connection the server closed meanwhile is retried once on a new one.
    """

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        parsed = urlsplit(base_url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.tail = f" HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{extra}\r\n".encode()
        self.free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> int:
        if self.free:
            try:
                return await self._exchange(self.free.pop(), path)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # closed by the server while idle: once more on a new connection
        return await self._exchange(await asyncio.open_connection(self.host, self.port), path)

    async def _exchange(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str
    ) -> int:
        reader, writer = conn
        try:
            writer.write(b"GET " + path.encode() + self.tail)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = None
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length is None:
                raise RuntimeError("response without Content-Length")
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            self.free.append(conn)
        return status

    def close(self) -> None:
        for _, writer in self.free:
            writer.close()
        self.free.clear()


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
    client = _Client(base_url, {"Authorization": f"Bearer {token}"})
    latencies: list[tuple[str, float]] = []
    lateness: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(path: str, intended: float) -> None:
        kind: str | None
        try:
            async with asyncio.timeout(timeout_s):
                status = await client.get(path)
            kind = None if status == 200 else f"status {status}"
        except TimeoutError:
            kind = "timeout"
        except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as exc:
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
            task = asyncio.create_task(one(chosen[(index + k) % len(chosen)], intended))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            k += 1

    start = time.perf_counter() + 0.2
    try:
        await asyncio.gather(*(user(u, start) for u in range(users)))
        if tasks:
            await asyncio.wait(set(tasks), timeout=timeout_s + 5)
    finally:
        client.close()
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
