"""Micro-benchmark: merging serialized HLL sketches, before/after (not a test).

    .venv/bin/python -m bench.sketch_merge

Builds day sketches like the rollups hold (LG_K, HLL_4, a few hundred distinct ids a
day, users overlapping across days) and times merging 30, 365 and 8,760 of them with
``rollups.merge_sketches`` (a Python loop: deserialize, update, get_result) and
``sketches_merge.merge_blobs`` (the loop in map/deque, estimate read off the union).
It checks that both give the same estimate and bounds, and times the same merge
with the blobs stored as HLL_8 (what the storage format would buy).
"""

from __future__ import annotations

import random
import time

import datasketches  # type: ignore[import-untyped]

from app.modules.events.sketches import LG_K, merge_sketches
from app.modules.events.sketches_merge import merge_blobs


def day_sketches(
    days: int,
    per_day: int = 400,
    population: int = 20_000,
    kind: datasketches.tgt_hll_type = datasketches.tgt_hll_type.HLL_4,
) -> list[bytes]:
    rng = random.Random(days)
    out = []
    for _ in range(days):
        sketch = datasketches.hll_sketch(LG_K, kind)
        for _ in range(per_day):
            sketch.update(rng.randrange(population))
        out.append(sketch.serialize_compact())
    return out


def best_of(fn: object, blobs: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn(blobs)  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    print(
        "| sketches | python loop (ms) | map/deque on the union (ms) | speed-up | same result"
        " | same, blobs stored as HLL_8 (ms) |"
    )
    print("|---|---|---|---|---|---|")
    for n in (30, 365, 8_760):
        blobs = day_sketches(n)
        old, new = merge_sketches(blobs), merge_blobs(blobs)
        same = (old.estimate, old.lower, old.upper) == (new.estimate, new.lower, new.upper)
        repeat = 50 if n < 1000 else 5
        t_old = best_of(merge_sketches, blobs, repeat)
        t_new = best_of(merge_blobs, blobs, repeat)
        hll8 = day_sketches(n, kind=datasketches.tgt_hll_type.HLL_8)
        t_hll8 = best_of(merge_blobs, hll8, repeat)
        print(
            f"| {n:,} | {t_old * 1e3:.3f} | {t_new * 1e3:.3f} | {t_old / t_new:.2f}x | {same}"
            f" | {t_hll8 * 1e3:.3f} |"
        )


if __name__ == "__main__":
    main()
