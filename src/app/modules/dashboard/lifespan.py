"""The dashboard's start-up: its per-process runtime (caches, limiter), subscribed to
the database's change notifications before the listener starts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar

from app.modules.dashboard.runtime import StatsRuntime


@asynccontextmanager
async def stats_lifespan(app: Litestar) -> AsyncIterator[None]:
    state: Any = app.state
    state.stats = StatsRuntime.create(state.settings, state.db, state.notify)
    yield
