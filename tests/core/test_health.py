from __future__ import annotations

import httpx


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
