"""The event store: the canonical event schema, idempotent loading and data versions.

Other modules import from here only: ``CanonicalEvent``, ``to_canonical``,
``RowRejected``, ``event_id_for``, ``load_events``, ``EventLoad``, ``LoadResult``,
``get_data_version``, ``DataVersion``, ``data_facts``, ``DataFacts`` (what a cached
dashboard answer depends on).
"""

from __future__ import annotations

from app.modules import Module
from app.modules.events.facts import DataFacts, data_facts
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

module = Module(name="events")

__all__ = [
    "CANONICAL_FIELDS",
    "CanonicalEvent",
    "DataFacts",
    "DataVersion",
    "EventLoad",
    "LoadLockTimeout",
    "LoadResult",
    "RowRejected",
    "data_facts",
    "event_id_for",
    "get_data_version",
    "load_events",
    "module",
    "to_canonical",
]
