"""Ingestion: sources, durable runs with leases, the runner, the scheduler, connectors.

Public interface: ``module`` (routes, dependencies and lifespan) and the synthetic
generator's ``iter_day_events`` (the development world's files and BigQuery tables are
made from it).

Both are resolved on first access (at app assembly), not when the package is imported:
the import worker processes import ``ingestion.prepare`` and the synthetic generator
only, and must not pay for the routes and the connector SDKs (about 100 MB per process).
"""

from __future__ import annotations

from typing import Any

from app.modules import Module


def _build() -> Module:
    from app.modules.ingestion.connectors import load_builtin_connectors
    from app.modules.ingestion.deps import dependencies
    from app.modules.ingestion.lifespan import ingestion_lifespan
    from app.modules.ingestion.routes import RunController, SourceController

    # At app assembly, not on the event loop: connector SDK imports take a while.
    load_builtin_connectors()
    return Module(
        name="ingestion",
        route_handlers=[SourceController, RunController],
        dependencies=dependencies,
        lifespan=[ingestion_lifespan],
    )


def __getattr__(name: str) -> Any:
    if name == "module":
        built = _build()
        globals()["module"] = built
        return built
    if name == "iter_day_events":
        from app.modules.ingestion.connectors.synthetic import iter_day_events

        globals()["iter_day_events"] = iter_day_events
        return iter_day_events
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["iter_day_events", "module"]
