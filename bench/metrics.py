"""Reading Pulse's /metrics: the event-loop lag histogram, as a difference of two scrapes."""

from __future__ import annotations

import math

import httpx

LAG = "pulse_event_loop_lag_seconds"


def scrape_lag(base_url: str) -> dict[float, float]:
    """Cumulative bucket counts of the loop-lag histogram: upper bound -> count."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith(LAG + "_bucket{"):
            continue
        labels, _, value = line.rpartition(" ")
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        buckets[math.inf if le == "+Inf" else float(le)] = float(value)
    return buckets


def lag_between(before: dict[float, float], after: dict[float, float]) -> dict[str, float | None]:
    """Samples, p50/p99 (the upper bound of the bucket holding that rank, in ms) and the
    highest non-empty bucket's bound between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return {"samples": 0, "p50_le_ms": None, "p99_le_ms": None, "max_le_ms": None}

    def rank_bound(q: float) -> float:
        target = q * total
        for bound, count in zip(bounds, counts, strict=True):
            if count >= target:
                return bound
        return math.inf

    top = math.inf
    previous = 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count > previous:
            top = bound
        previous = count

    def ms(bound: float) -> float | None:
        return None if math.isinf(bound) else round(bound * 1000, 1)

    return {
        "samples": int(total),
        "p50_le_ms": ms(rank_bound(0.50)),
        "p99_le_ms": ms(rank_bound(0.99)),
        "max_le_ms": ms(top),
    }
