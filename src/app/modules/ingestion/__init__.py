"""Ingestion: sources, durable runs with leases, the runner, the scheduler, connectors.

Public interface: ``module`` (routes and lifespan), the connector registry
(``app.modules.ingestion.connectors``) and the synthetic generator
(``app.modules.ingestion.connectors.synthetic``).

``module`` is built on first access (at app assembly), not when the package is
imported: the import worker processes import ``ingestion.prepare`` and the synthetic
generator only, and must not pay for the routes and the connector SDKs (about 100 MB
per process).
"""

from __future__ import annotations

from typing import Any

from app.modules import Module


def _build() -> Module:
    from app.modules.ingestion.connectors import load_builtin_connectors
    from app.modules.ingestion.lifespan import ingestion_lifespan
    from app.modules.ingestion.routes import RunController, SourceController

    # At app assembly, not on the event loop: connector SDK imports take a while.
    load_builtin_connectors()
    return Module(
        name="ingestion",
        route_handlers=[SourceController, RunController],
        lifespan=[ingestion_lifespan],
    )


def __getattr__(name: str) -> Any:
    if name == "module":
        built = _build()
        globals()["module"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["module"]
