"""Merging the rollups' serialized HyperLogLog sketches, with the iteration in C.

A query merges one sketch per rollup row of a group (a 365-day summary: 365 per
distinct count). The union is DataSketches' own; the loop over the blobs is
``map``/``deque`` (C), so no Python bytecode runs per sketch, and the estimate and
bounds are read from the union itself (no result sketch is materialised).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import datasketches  # type: ignore[import-untyped]

from app.modules.events.sketches import LG_K, NUM_STD_DEV, DistinctCount, exact

_deserialize = datasketches.hll_sketch.deserialize


def merge_blobs(blobs: Iterable[bytes] | None) -> DistinctCount:
    """The distinct count of the union of serialized HLL sketches (0 for none)."""
    if not blobs:
        return exact(0)
    union = datasketches.hll_union(LG_K)
    # asyncpg hands bytea over as bytes: deserialize reads them without a copy.
    deque(map(union.update, map(_deserialize, blobs)), maxlen=0)
    return DistinctCount(
        estimate=union.get_estimate(),
        lower=union.get_lower_bound(NUM_STD_DEV),
        upper=union.get_upper_bound(NUM_STD_DEV),
        is_exact=False,
    )
