"""Ingestion: sources, durable runs with leases, the runner, the scheduler, connectors.

Public interface: ``module`` (routes and lifespan) and the synthetic generator's
``iter_day_events`` (the development world's files and BigQuery tables are made from it).
"""

from __future__ import annotations

from app.modules import Module
from app.modules.ingestion.connectors import load_builtin_connectors
from app.modules.ingestion.connectors.synthetic import iter_day_events
from app.modules.ingestion.deps import dependencies
from app.modules.ingestion.lifespan import ingestion_lifespan
from app.modules.ingestion.routes import RunController, SourceController

# At app assembly, not on the event loop: connector SDK imports take a while.
load_builtin_connectors()

module = Module(
    name="ingestion",
    route_handlers=[SourceController, RunController],
    dependencies=dependencies,
    lifespan=[ingestion_lifespan],
)

__all__ = ["iter_day_events", "module"]
