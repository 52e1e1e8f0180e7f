"""A database that goes away gives 503 problem+json, and Pulse recovers without a restart."""

from __future__ import annotations

import asyncio

from app.main import create_app
from tests.conftest import make_settings, serve_in_process
from tests.fixtures.postgres import EmbeddedPostgres


async def test_outage_answers_503_then_recovers_without_restart(
    own_postgres: tuple[EmbeddedPostgres, str],
) -> None:
    pg, url = own_postgres
    app = create_app(make_settings(url, db_pool_timeout_s=2.0, db_connect_timeout_s=2.0))
    async with serve_in_process(app) as client:
        assert (await client.get("/health/ready")).status_code == 200

        await asyncio.to_thread(pg.stop)
        down = await client.get("/health/ready")
        assert down.status_code == 503
        assert down.headers["content-type"] == "application/problem+json"
        assert down.json()["reasons"][0].startswith("database: unreachable")
        assert down.headers["retry-after"]

        await asyncio.to_thread(pg.restart)
        back = await client.get("/health/ready")
        assert back.status_code == 200, back.text


async def test_readiness_reports_a_database_behind_the_migration_head(
    own_postgres: tuple[EmbeddedPostgres, str],
) -> None:
    _, url = own_postgres
    app = create_app(make_settings(url))
    async with serve_in_process(app) as client:
        db = app.state.db
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
        response = await client.get("/health/ready")
    assert response.status_code == 503
    assert "expected" in response.json()["detail"]
