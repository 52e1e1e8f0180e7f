"""Dashboard stats: one declarative query engine behind the stats routes, CSV export
and the weekly digest.

Public: ``run_query(session, tenant_id, query) -> StatsResult`` and the schemas
``StatsQuery``, ``StatsResult``, ``StatsRow``; ``module`` for the app.
"""

from __future__ import annotations

from app.modules import Module
from app.modules.dashboard.deps import dependencies
from app.modules.dashboard.lifespan import stats_lifespan
from app.modules.dashboard.routes import StatsController
from app.modules.dashboard.schemas import StatsQuery, StatsResult, StatsRow
from app.modules.dashboard.service import run_query

module = Module(
    name="dashboard",
    route_handlers=[StatsController],
    dependencies=dependencies,
    lifespan=[stats_lifespan],
)

__all__ = ["StatsQuery", "StatsResult", "StatsRow", "module", "run_query"]
