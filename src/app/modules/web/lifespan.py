"""The web module's start-up: its static files, read into memory off the loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar

from app.modules.web.assets import read_assets

log = structlog.get_logger("app.web")


@asynccontextmanager
async def web_lifespan(app: Litestar) -> AsyncIterator[None]:
    state: Any = app.state
    state.web_assets = await asyncio.to_thread(read_assets)
    log.info("web.assets_loaded", files=len(state.web_assets))
    yield
