"""Dashboard stats: one declarative query engine behind the stats routes, CSV export
and the weekly digest.

Public: ``run_query(session, tenant_id, query) -> StatsResult`` and the schemas
``StatsQuery``, ``StatsResult``, ``StatsRow``.
"""

from __future__ import annotations

from app.modules.dashboard.schemas import StatsQuery, StatsResult, StatsRow
from app.modules.dashboard.service import run_query

__all__ = ["StatsQuery", "StatsResult", "StatsRow", "run_query"]
