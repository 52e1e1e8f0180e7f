"""The start-up heap is frozen out of the cyclic garbage collector's full passes."""

from __future__ import annotations

import gc

from app.core.lifespan import freeze_startup_heap


def test_freezing_takes_the_startup_heap_out_of_full_collections() -> None:
    try:
        frozen = freeze_startup_heap()
        # Everything alive now (this process has imported the whole app) is frozen, and
        # the oldest generation a full collection walks no longer holds it.
        assert frozen > 10_000
        assert len(gc.get_objects(generation=2)) < frozen // 10
        survivor: list[list[str]] = [["made after the freeze"]]
        assert not any(obj is survivor for obj in gc.get_objects(generation=2))
        gc.collect()
        assert any(obj is survivor for obj in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()
