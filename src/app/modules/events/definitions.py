"""The event store's rules, written once: which dimensions exist (and their rollup ids) and
what makes a session engaged. A leaf module (it imports nothing of the event store), so the
rollup refresh and the query engine can both import it without a cycle.
"""

from __future__ import annotations

# Dimension name -> rollup dimension id (0 is the "all events" total). The rollup refresh
# groups by them in this order.
DIMENSIONS: dict[str, int] = {
    "event_name": 1,
    "page_path": 2,
    "country": 3,
    "city": 4,
    "device_category": 5,
    "os": 6,
    "browser": 7,
    "source": 8,
    "medium": 9,
    "campaign": 10,
}
TOTAL_DIMENSION = 0
# The dimension names in id order (1, 2, ...): the rollups' fan-out order.
DIMENSION_NAMES: tuple[str, ...] = tuple(sorted(DIMENSIONS, key=DIMENSIONS.__getitem__))

# Rollup grains (stats_rollups.grain).
GRAIN_HOUR = 0
GRAIN_DAY = 1
# Derived from the day rows after imports commit (app.modules.events.grains).
GRAIN_WEEK = 2
GRAIN_MONTH = 3

# GA4: an engaged session lasted 10 s or more, had two or more page views, had a
# conversion, or was flagged engaged by the collector.
ENGAGED_MIN_MSEC = 10_000
ENGAGED_MIN_PAGEVIEWS = 2
PAGE_VIEW = "page_view"
FIRST_VISIT = "first_visit"
