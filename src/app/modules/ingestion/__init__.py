"""Ingestion: sources, durable runs with leases, the runner, the scheduler, connectors.

Public interface: ``module`` (routes and lifespan), the connector registry
(``app.modules.ingestion.connectors``) and the synthetic generator
(``app.modules.ingestion.connectors.synthetic``).
"""

from __future__ import annotations

from app.modules import Module
from app.modules.ingestion.connectors import load_builtin_connectors
from app.modules.ingestion.lifespan import ingestion_lifespan
from app.modules.ingestion.routes import RunController, SourceController

# At app assembly, not on the event loop: connector SDK imports take a while.
load_builtin_connectors()

module = Module(
    name="ingestion",
    route_handlers=[SourceController, RunController],
    lifespan=[ingestion_lifespan],
)

__all__ = ["module"]
