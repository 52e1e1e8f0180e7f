from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from litestar import Litestar

from app.core.settings import Settings
from app.main import create_app
from tests.conftest import make_settings, serve_in_process

Serve = Callable[..., AbstractAsyncContextManager[tuple[Litestar, httpx.AsyncClient]]]


@pytest.fixture
def serve(settings: Settings, clean_tables: None) -> Serve:
    """``async with serve(**setting_overrides) as (app, http)``: an app with other settings."""

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
        app = create_app(make_settings(settings.database_url or "", **overrides))
        async with serve_in_process(app) as http:
            yield app, http

    return run


@pytest.fixture(scope="session", autouse=True)
def _modules_imported() -> None:
    """Import every installed module outside the event loop (some read files at import),
    so an app first built inside an async test does not trip blockbuster."""
    from app import modules

    modules.installed()
