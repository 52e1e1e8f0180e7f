"""Typed dependencies of the stats routes."""

from __future__ import annotations

from litestar.datastructures import State
from litestar.di import Provide

from app.modules.dashboard.runtime import StatsRuntime


def provide_stats_runtime(state: State) -> StatsRuntime:
    """The process's stats runtime (caches, limiter, database), set up by the lifespan."""
    runtime: StatsRuntime = state.stats
    return runtime


dependencies = {"stats_runtime": Provide(provide_stats_runtime, sync_to_thread=False)}
