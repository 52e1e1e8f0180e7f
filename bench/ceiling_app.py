"""Minimal Litestar apps the dashboard is measured beside, served like Pulse (uvicorn,
uvloop, httptools, no access log), one process each:

* ``framework``: ``GET /constant`` returns Pulse's own summary JSON, stored as bytes: the
  framework ceiling (HTTP + routing, nothing else).
* ``database``: ``GET /db`` runs one trivial query (``SELECT 1``) on a bare asyncpg pool of
  Pulse's size, then returns the same bytes: the database ceiling.
* ``replay``: ``GET /replay/{endpoint}/{i}`` sends the statements Pulse sent for request
  ``i`` of ``endpoint`` (captured with their parameters, ``bench/dashboard.py``) on that
  pool, without a transaction, and returns the same bytes: what Pulse's own statements
  cost without Pulse's Python work around them.

``python -m uvicorn --factory bench.ceiling_app:create`` with ``BENCH_CEILING_MODE``,
``BENCH_CEILING_BODY`` (a file), ``BENCH_CEILING_DSN`` and ``BENCH_CEILING_STATEMENTS``
(a pickle of ``{endpoint: [[(sql, params), ...], ...]}``).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from litestar import Litestar, Response, get

POOL_SIZE = 20
JSON = "application/json"


def create() -> Litestar:
    mode = os.environ["BENCH_CEILING_MODE"]
    body = Path(os.environ["BENCH_CEILING_BODY"]).read_bytes()
    state: dict[str, Any] = {}
    if mode == "replay":
        path = Path(os.environ["BENCH_CEILING_STATEMENTS"])
        state["statements"] = pickle.loads(path.read_bytes())  # noqa: S301 - our own file

    @asynccontextmanager
    async def pool_lifespan(_app: Litestar) -> AsyncIterator[None]:
        if mode == "framework":
            yield
            return
        state["pool"] = await asyncpg.create_pool(
            os.environ["BENCH_CEILING_DSN"],
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            command_timeout=60,
        )
        try:
            yield
        finally:
            await state["pool"].close()

    @get("/health", sync_to_thread=False)
    def health() -> Response[bytes]:
        return Response(b"{}", media_type=JSON)

    @get("/constant", sync_to_thread=False)
    def constant() -> Response[bytes]:
        return Response(body, media_type=JSON)

    @get("/db")
    async def database() -> Response[bytes]:
        async with state["pool"].acquire() as conn:
            await conn.fetchval("SELECT 1")
        return Response(body, media_type=JSON)

    @get("/replay/{endpoint:str}/{index:int}")
    async def replay(endpoint: str, index: int) -> Response[bytes]:
        requests = state["statements"][endpoint]
        async with state["pool"].acquire() as conn:
            for sql, params in requests[index % len(requests)]:
                await conn.fetch(sql, *params)
        return Response(body, media_type=JSON)

    return Litestar(
        route_handlers=[health, constant, database, replay],
        lifespan=[pool_lifespan],
        openapi_config=None,
        debug=False,
    )
