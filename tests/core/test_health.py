from __future__ import annotations

import httpx
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.db import async_url


async def test_live_answers_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_database_is_migrated(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok"}


async def test_unknown_path_is_problem_json_with_request_id(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/no/such/thing", headers={"X-Request-ID": "req-123"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "req-123"
    body = response.json()
    assert body["status"] == 404
    assert body["instance"] == "/no/such/thing"


async def test_ready_right_after_the_server_dropped_the_pooled_connection(
    client: httpx.AsyncClient, app: Litestar, database_url: str
) -> None:
    """Connections are not pinged on checkout: the first statement on a pooled
    connection the server dropped (as a database restart does) fails, and the check
    retries once on a fresh connection instead of reporting the database down."""
    assert (await client.get("/health/ready")).status_code == 200
    async with app.state.db.engine.connect() as conn:
        pid = await conn.scalar(text("SELECT pg_backend_pid()"))
    owner = create_async_engine(async_url(database_url))  # the owner may terminate it
    try:
        async with owner.connect() as other:
            assert await other.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    finally:
        await owner.dispose()
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
