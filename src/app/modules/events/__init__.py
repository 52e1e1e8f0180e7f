"""The event store: the canonical event schema, idempotent loading and data versions.

Other modules import from here only: ``CanonicalEvent``, ``to_canonical``,
``RowRejected``, ``event_id_for``, ``load_events``, ``EventLoad``, ``LoadResult``,
``get_data_version``, ``DataVersion``, ``data_facts``, ``DataFacts`` (what a cached
dashboard answer depends on); the query engine: ``aggregate_all`` with ``AggregateSpec``,
``Filter``, ``GroupKey``, ``TopN``, ``AggregateResult``, ``Aggregates``, ``DistinctCount``,
``DIMENSIONS``, ``FILTER_OPERATORS``, ``TIME_GRAINS``, ``RANKABLE``, ``time_grain``; and the
rollups' state and accuracy: ``rollup_state``, ``RollupState``, ``CONFIDENCE``,
``RELATIVE_ERROR``; week and month rollups: ``compact_tenant_rollups`` (after imports commit).
"""

from __future__ import annotations

from app.modules import Module
from app.modules.events.definitions import DIMENSIONS
from app.modules.events.facts import DataFacts, data_facts
from app.modules.events.grains import compact_tenant_rollups
from app.modules.events.query import aggregate_all, first_event_day
from app.modules.events.schema import (
    CANONICAL_FIELDS,
    CanonicalEvent,
    RowRejected,
    event_id_for,
    to_canonical,
)
from app.modules.events.service import (
    DataVersion,
    EventLoad,
    LoadLockTimeout,
    LoadResult,
    get_data_version,
    load_events,
)
from app.modules.events.sketches import CONFIDENCE, RELATIVE_ERROR, DistinctCount
from app.modules.events.spec import (
    FILTER_OPERATORS,
    RANKABLE,
    TIME_GRAINS,
    AggregateResult,
    Aggregates,
    AggregateSpec,
    Filter,
    GroupKey,
    TopN,
    time_grain,
)
from app.modules.events.state import RollupState, rollup_state

module = Module(name="events")

__all__ = [
    "CANONICAL_FIELDS",
    "CONFIDENCE",
    "DIMENSIONS",
    "FILTER_OPERATORS",
    "RANKABLE",
    "RELATIVE_ERROR",
    "TIME_GRAINS",
    "AggregateResult",
    "AggregateSpec",
    "Aggregates",
    "CanonicalEvent",
    "DataFacts",
    "DataVersion",
    "DistinctCount",
    "EventLoad",
    "Filter",
    "GroupKey",
    "LoadLockTimeout",
    "LoadResult",
    "RollupState",
    "RowRejected",
    "TopN",
    "aggregate_all",
    "compact_tenant_rollups",
    "data_facts",
    "event_id_for",
    "first_event_day",
    "get_data_version",
    "load_events",
    "module",
    "rollup_state",
    "time_grain",
    "to_canonical",
]
