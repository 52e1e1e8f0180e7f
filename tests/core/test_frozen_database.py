"""A PostgreSQL that stops answering (frozen with SIGSTOP, as a stalled disk or network
does) costs a request at most the request timeout: 503 problem+json with Retry-After,
never a hang or a 500; cached answers keep being served; service resumes by itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.core.db import async_url
from app.main import create_app
from app.modules.events import load_events
from app.modules.tenants import TenantCreate, create_tenant
from tests.conftest import make_settings, serve_in_process
from tests.fixtures.events import make_event
from tests.fixtures.postgres import EmbeddedPostgres

BASE = "/api/v1/tenants/acme/stats"
CACHED = f"{BASE}/summary?date_range=2026-03-01,2026-03-31"


def postgres_processes(data_dir: Path) -> list[int]:
    """The postmaster of ``data_dir`` and every backend and helper it started."""
    postmaster = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    children = psutil.Process(postmaster).children(recursive=True)
    return [postmaster, *(child.pid for child in children)]


def signal_all(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


async def _seed(url: str) -> None:
    engine = create_async_engine(async_url(url))
    try:
        async with async_sessionmaker(engine)() as session:
            await create_tenant(session, TenantCreate(id="acme", name="Acme", timezone="UTC"))
            events = [
                make_event(f"2026-03-{day:02d}T10:00:00Z", user_id=f"u{day}", session_id=f"s{day}")
                for day in range(1, 29)
            ]
            await load_events(session, "acme", events, source_id=None)
            await session.commit()
    finally:
        await engine.dispose()


async def test_frozen_database_answers_503_within_the_request_bound_then_recovers(
    own_postgres: tuple[EmbeddedPostgres, str], auth_headers: Any
) -> None:
    pg, url = own_postgres
    await _seed(url)
    viewer = auth_headers("acme", "viewer")
    settings = make_settings(
        url, db_request_timeout_s=1.5, db_pool_timeout_s=1.0, db_connect_timeout_s=1.0
    )
    app = create_app(settings)
    async with serve_in_process(app) as http:
        # The listener's first connection resynchronises (drops what is cached): let it
        # connect before the answer that must stay cached is cached.
        async with asyncio.timeout(30):
            await app.state.notify.wait_live()
        assert (await http.get(CACHED, headers=viewer)).status_code == 200
        pids = await asyncio.to_thread(postgres_processes, pg.data_dir)
        try:
            signal_all(pids, signal.SIGSTOP)
            # A hang fails here instead of stalling the suite (the bound under test is 1.5 s).
            async with asyncio.timeout(60):
                cached = await http.get(CACHED, headers=viewer)
                # More uncached queries at once than idle pooled connections: some wait on
                # a pooled connection's statement, others on opening a new connection.
                frozen = await asyncio.gather(
                    *(
                        http.get(
                            f"{BASE}/summary?date_range=2026-03-{day:02d},2026-03-28",
                            headers=viewer,
                        )
                        for day in range(1, 13)
                    )
                )
                ready = await http.get("/health/ready")
        finally:
            signal_all(pids, signal.SIGCONT)

        assert cached.status_code == 200
        assert cached.headers["x-cache"] == "hit"
        assert ready.status_code == 503
        assert ready.headers["retry-after"]
        for response in frozen:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"]
            assert response.json()["title"] == "Service Unavailable"

        async with asyncio.timeout(60):
            back = await http.get(
                f"{BASE}/summary?date_range=2026-03-02,2026-03-28", headers=viewer
            )
        assert back.status_code == 200, back.text
        assert back.json()["totals"]["events"] == 27
