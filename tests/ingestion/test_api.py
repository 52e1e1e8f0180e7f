"""The sources and runs API, through the app with auth, its runner and its scheduler."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.core.settings import Settings
from tests.fixtures.ingestion import IngestKit, fast_settings, wait_until
from tests.fixtures.oidc import AuthHeaders

BASE = "/api/v1/tenants/acme"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return fast_settings(database_url)


@pytest.fixture
async def admin(ingest: IngestKit, auth_headers: AuthHeaders) -> dict[str, str]:
    await ingest.tenant()
    return auth_headers(tenant="acme", role="admin")


def synthetic(**config: Any) -> dict[str, Any]:
    return {
        "kind": "synthetic",
        "name": "demo",
        "config": {"seed": 1, "sessions_per_day": 10, **config},
        "secrets": {"token": "s3cr3t-value"},
    }


async def test_source_crud_never_returns_secrets(
    client: httpx.AsyncClient, admin: dict[str, str], ingest: IngestKit
) -> None:
    created = await client.post(f"{BASE}/sources", json=synthetic(), headers=admin)
    assert created.status_code == 201, created.text
    body = created.json()
    assert "s3cr3t-value" not in created.text
    assert body["secret_fields"] == ["token"]
    assert "secrets" not in body
    source_id = body["id"]
    stored = await ingest.scalar(
        "SELECT secrets_ciphertext FROM ingestion_sources WHERE id = :id", id=source_id
    )
    assert "s3cr3t" not in stored
    assert stored.startswith("v1:")

    listed = await client.get(f"{BASE}/sources", headers=admin)
    assert [s["id"] for s in listed.json()["items"]] == [source_id]
    got = await client.get(f"{BASE}/sources/{source_id}", headers=admin)
    assert "s3cr3t" not in got.text

    patched = await client.patch(
        f"{BASE}/sources/{source_id}",
        json={"name": "renamed", "schedule": {"cron": "0 3 * * *"}},
        headers=admin,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "renamed"
    assert patched.json()["schedule"] == {"cron": "0 3 * * *", "interval_s": None}
    assert patched.json()["secret_fields"] == ["token"]

    duplicate = await client.post(
        f"{BASE}/sources", json={**synthetic(), "name": "renamed"}, headers=admin
    )
    assert duplicate.status_code == 409
    deleted = await client.delete(f"{BASE}/sources/{source_id}", headers=admin)
    assert deleted.status_code == 204
    gone = await client.get(f"{BASE}/sources/{source_id}", headers=admin)
    assert gone.status_code == 404


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**synthetic(), "kind": "ftp"}, "kind"),
        ({**synthetic(), "config": {"sessions_per_day": -1}}, "config"),
        ({**synthetic(), "secrets": {"nope": 1}}, "secrets"),
        ({**synthetic(), "schedule": {"cron": "61 * * * *"}}, "schedule.cron"),
        ({**synthetic(), "schedule": {}}, "schedule"),
    ],
)
async def test_invalid_sources_are_rejected_with_the_field(
    client: httpx.AsyncClient, admin: dict[str, str], payload: dict[str, Any], field: str
) -> None:
    response = await client.post(f"{BASE}/sources", json=payload, headers=admin)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json().get("field") == field


async def test_viewers_and_other_tenants_cannot_manage_sources(
    client: httpx.AsyncClient, admin: dict[str, str], auth_headers: AuthHeaders
) -> None:
    viewer = await client.get(f"{BASE}/sources", headers=auth_headers(tenant="acme", role="viewer"))
    assert viewer.status_code == 403
    outsider = await client.get(f"{BASE}/sources", headers=auth_headers(tenant="other"))
    assert outsider.status_code == 404
    anonymous = await client.get(f"{BASE}/sources")
    assert anonymous.status_code == 401


async def test_manual_run_through_the_api_loads_and_reports_progress(
    client: httpx.AsyncClient, admin: dict[str, str], ingest: IngestKit
) -> None:
    source = (await client.post(f"{BASE}/sources", json=synthetic(), headers=admin)).json()
    accepted = await client.post(
        f"{BASE}/sources/{source['id']}/runs",
        json={"trigger": "backfill", "start": "2026-01-05", "end": "2026-01-06"},
        headers=admin,
    )
    assert accepted.status_code == 202, accepted.text
    run = accepted.json()
    assert run["status"] == "queued"
    assert (run["window_start"], run["window_end"]) == ("2026-01-05", "2026-01-06")

    async def finished() -> bool:
        got = await client.get(f"{BASE}/runs/{run['id']}", headers=admin)
        return got.json()["status"] in ("succeeded", "failed")

    await wait_until(finished, timeout_s=60)
    done = (await client.get(f"{BASE}/runs/{run['id']}", headers=admin)).json()
    assert done["status"] == "succeeded", done
    assert done["progress"]["rows_loaded"] == await ingest.event_count() > 0

    listed = await client.get(
        f"{BASE}/runs", params={"source_id": source["id"], "status": "succeeded"}, headers=admin
    )
    assert [r["id"] for r in listed.json()["items"]] == [run["id"]]
    none = await client.get(f"{BASE}/runs", params={"status": "failed"}, headers=admin)
    assert none.json()["items"] == []
    again = await client.post(f"{BASE}/runs/{run['id']}/cancel", headers=admin)
    assert again.status_code == 409

    source_after = (await client.get(f"{BASE}/sources/{source['id']}", headers=admin)).json()
    assert source_after["last_run"]["status"] == "succeeded"
    assert source_after["cursor"] == {"last_completed_day": "2026-01-06"}


async def test_progress_stream_ends_with_the_final_state(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = (await client.post(f"{BASE}/sources", json=synthetic(), headers=admin)).json()
    run = (
        await client.post(
            f"{BASE}/sources/{source['id']}/runs",
            json={"start": "2026-01-05", "end": "2026-01-05"},
            headers=admin,
        )
    ).json()
    async with client.stream("GET", f"{BASE}/runs/{run['id']}/progress", headers=admin) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        text_ = "".join([chunk async for chunk in stream.aiter_text()])
    assert "event: run" in text_
    assert '"status":"succeeded"' in text_


async def test_cancel_through_the_api_stops_the_run(
    client: httpx.AsyncClient, admin: dict[str, str], ingest: IngestKit
) -> None:
    payload = synthetic(sessions_per_day=300, batch_rows=50, batch_delay_ms=300)
    source = (await client.post(f"{BASE}/sources", json=payload, headers=admin)).json()
    run = (
        await client.post(
            f"{BASE}/sources/{source['id']}/runs",
            json={"start": "2026-01-05", "end": "2026-01-05"},
            headers=admin,
        )
    ).json()

    async def running() -> bool:
        got = (await client.get(f"{BASE}/runs/{run['id']}", headers=admin)).json()
        return got["status"] == "running"

    await wait_until(running, timeout_s=30)
    cancelled = await client.post(f"{BASE}/runs/{run['id']}/cancel", headers=admin)
    assert cancelled.status_code == 202
    done = await ingest.wait_final(run["id"], timeout_s=5)
    assert done.status == "cancelled"


async def test_window_validation(
    client: httpx.AsyncClient, admin: dict[str, str], ingest: IngestKit
) -> None:
    source = (await client.post(f"{BASE}/sources", json=synthetic(), headers=admin)).json()
    url = f"{BASE}/sources/{source['id']}/runs"
    backwards = await client.post(
        url, json={"start": "2026-01-05", "end": "2026-01-01"}, headers=admin
    )
    assert backwards.status_code == 400
    no_window = await client.post(url, json={"trigger": "backfill"}, headers=admin)
    assert no_window.status_code == 400
    too_long = await client.post(
        url, json={"start": "2024-01-01", "end": "2026-01-01"}, headers=admin
    )
    assert too_long.status_code == 400
    default = await client.post(url, json={}, headers=admin)
    assert default.status_code == 202
    # The source's default window: the last day, in the tenant's timezone (UTC here).
    assert default.json()["window_start"] == default.json()["window_end"]
    assert date.fromisoformat(default.json()["window_end"]) >= date.today() - timedelta(days=1)
    # Leave nothing loading behind the test.
    await ingest.wait_final(default.json()["id"])


async def test_source_test_endpoint_reports_structured_checks(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    source = (await client.post(f"{BASE}/sources", json=synthetic(), headers=admin)).json()
    result = await client.post(f"{BASE}/sources/{source['id']}/test", headers=admin)
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["ok"] is True
    assert body["checks"][0]["name"] == "generator"


@pytest.mark.usefixtures("fake_connectors")
async def test_source_test_gives_up_at_its_timeout(
    database_url: str, ingest: IngestKit, auth_headers: AuthHeaders
) -> None:
    from app.main import create_app
    from tests.conftest import serve_in_process

    await ingest.tenant()
    app = create_app(fast_settings(database_url, ingest_test_timeout_s=0.3))
    headers = auth_headers(tenant="acme", role="admin")
    async with serve_in_process(app) as client:
        source = (
            await client.post(
                f"{BASE}/sources", json={"kind": "test_hanging", "name": "h"}, headers=headers
            )
        ).json()
        result = await client.post(f"{BASE}/sources/{source['id']}/test", headers=headers)
    body = result.json()
    assert body["ok"] is False
    assert body["checks"][0]["name"] == "timeout"


async def test_quarantine_listing(
    client: httpx.AsyncClient, admin: dict[str, str], ingest: IngestKit
) -> None:
    payload = synthetic(bad_row_every=25)
    source = (await client.post(f"{BASE}/sources", json=payload, headers=admin)).json()
    run = (
        await client.post(
            f"{BASE}/sources/{source['id']}/runs",
            json={"start": "2026-01-05", "end": "2026-01-05"},
            headers=admin,
        )
    ).json()
    await ingest.wait_final(run["id"])
    page = (await client.get(f"{BASE}/runs/{run['id']}/quarantine", headers=admin)).json()
    assert page["items"]
    assert page["items"][0]["line_number"] == 25
    count = await ingest.scalar(
        "SELECT rows_rejected FROM ingestion_runs WHERE id = :id", id=run["id"]
    )
    assert count == len(page["items"])
    assert page["next_cursor"] is None
    # The same rows two at a time, following next_cursor.
    walked: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        got = await client.get(f"{BASE}/runs/{run['id']}/quarantine", params=params, headers=admin)
        assert got.status_code == 200, got.text
        walked += got.json()["items"]
        cursor = got.json()["next_cursor"]
        if cursor is None:
            break
    assert walked == page["items"]
    async with ingest.db.session(all_tenants=True) as session:
        assert (await session.execute(text("SELECT count(*) FROM ingestion_quarantine"))).scalar()


async def test_runs_list_pages_by_cursor_newest_first(
    client: httpx.AsyncClient, admin: dict[str, str], ingest: IngestKit
) -> None:
    source = await ingest.source(config={"seed": 1, "sessions_per_day": 5})
    queued = [
        (await ingest.queue_run(source.id, date(2026, 1, day), date(2026, 1, day))).id
        for day in (5, 6, 7)
    ]
    first = await client.get(f"{BASE}/runs", params={"limit": 2}, headers=admin)
    assert first.status_code == 200, first.text
    assert first.json()["next_cursor"]
    second = await client.get(
        f"{BASE}/runs", params={"limit": 2, "cursor": first.json()["next_cursor"]}, headers=admin
    )
    assert second.json()["next_cursor"] is None
    listed = [r["id"] for r in first.json()["items"] + second.json()["items"]]
    assert listed == [str(run_id) for run_id in reversed(queued)]


@pytest.mark.parametrize("cursor", ["garbage", "2026-01-05T00:00:00~not-a-uuid", "1~2~3"])
async def test_a_cursor_the_api_did_not_return_is_a_400(
    client: httpx.AsyncClient, admin: dict[str, str], cursor: str
) -> None:
    for path in (f"{BASE}/runs", f"{BASE}/runs/00000000-0000-0000-0000-000000000001/quarantine"):
        response = await client.get(path, params={"cursor": cursor}, headers=admin)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["field"] == "cursor"
