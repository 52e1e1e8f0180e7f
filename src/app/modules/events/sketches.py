"""HyperLogLog sketches of distinct users and sessions (Apache DataSketches).

lg_k=12, HLL_4: a sketch is a few KB at most, unions are exact-equivalent (union of
unions = union of all), and a merged estimate's relative error is bounded by
:data:`RELATIVE_ERROR` at :data:`CONFIDENCE`. Building sketches from hashes is pure CPU
and runs in the import worker processes (bytes in, small tuples out).
"""

from __future__ import annotations

import array
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import datasketches  # type: ignore[import-untyped]

LG_K = 12
HLL_TYPE = datasketches.tgt_hll_type.HLL_4
# Confidence of the reported bounds: three standard deviations (99.7%).
NUM_STD_DEV = 3
CONFIDENCE = 0.997
# The bound on |estimate - exact| / exact for a merged (unioned) sketch at that confidence.
RELATIVE_ERROR: float = abs(datasketches.hll_sketch.get_rel_err(True, True, LG_K, NUM_STD_DEV))


@dataclass(frozen=True)
class DistinctCount:
    """A distinct count: exact, or an HLL estimate with bounds at :data:`CONFIDENCE`."""

    estimate: float
    lower: float
    upper: float
    is_exact: bool

    @property
    def value(self) -> int:
        return round(self.estimate)


def exact(n: int) -> DistinctCount:
    return DistinctCount(float(n), float(n), float(n), True)


def sketch_of(hashes: Iterable[int]) -> bytes | None:
    """A compact serialized HLL sketch of 64-bit hashes (None when there are none).
    Repeated hashes are fine: a sketch counts each distinct value once."""
    sketch = datasketches.hll_sketch(LG_K, HLL_TYPE)
    empty = True
    for h in hashes:
        sketch.update(h)
        empty = False
    return None if empty else bytes(sketch.serialize_compact())


def merge_sketches(blobs: Sequence[bytes]) -> DistinctCount:
    """The distinct count of the union of serialized sketches."""
    if not blobs:
        return exact(0)
    union = datasketches.hll_union(LG_K)
    for blob in blobs:
        union.update(datasketches.hll_sketch.deserialize(bytes(blob)))
    result = union.get_result(HLL_TYPE)
    return DistinctCount(
        estimate=result.get_estimate(),
        lower=result.get_lower_bound(NUM_STD_DEV),
        upper=result.get_upper_bound(NUM_STD_DEV),
        is_exact=False,
    )


def hash_values(blob: bytes | None) -> array.array[int]:
    """64-bit hashes sent by PostgreSQL as concatenated ``int8send`` values."""
    values: array.array[int] = array.array("q")
    if blob:
        values.frombytes(blob)
        if sys.byteorder == "little":
            values.byteswap()  # int8send is big-endian
    return values


Sketches = tuple[int, int, bytes | None, bytes | None, bytes | None, bytes | None]


def build_group_sketches(
    groups: Sequence[tuple[bytes | None, bytes | None, bytes | None, bytes | None]],
) -> list[Sketches]:
    """Per group: exact distinct users and sessions, and the four sketches. Pure CPU:
    runs in a worker process during imports; bytes in, small tuples out."""
    out: list[Sketches] = []
    for users, sessions, engaged, converting in groups:
        user_hashes, session_hashes = hash_values(users), hash_values(sessions)
        out.append(
            (
                len(set(user_hashes)),
                len(set(session_hashes)),
                sketch_of(user_hashes),
                sketch_of(session_hashes),
                sketch_of(hash_values(engaged)),
                sketch_of(hash_values(converting)),
            )
        )
    return out
