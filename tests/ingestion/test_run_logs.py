"""Every log line of an import run carries its tenant and run ids, and a run queued by a
request carries that request's id too (recorded on the run, so a retry on another
replica still has it). The app's real log handler is captured in JSON."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from litestar import Litestar

from app.core.logging import configure_logging
from app.core.settings import Settings
from tests.conftest import make_settings
from tests.fixtures.ingestion import IngestKit, fast_settings, wait_until
from tests.fixtures.oidc import AuthHeaders

BASE = "/api/v1/tenants/acme"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return fast_settings(database_url, log_level="INFO")


@pytest.fixture
def log_output(app: Litestar, database_url: str) -> Iterator[io.StringIO]:
    """The app's real handler writing JSON lines to a buffer (after create_app set it up)."""
    stream = io.StringIO()
    configure_logging(
        fast_settings(database_url, log_level="INFO", log_format="json"), stream=stream
    )
    try:
        yield stream
    finally:
        configure_logging(make_settings(database_url))


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


@pytest.mark.usefixtures("fake_connectors")
async def test_a_run_queued_by_a_request_logs_every_line_with_tenant_run_and_request_ids(
    client: httpx.AsyncClient,
    log_output: io.StringIO,
    ingest: IngestKit,
    auth_headers: AuthHeaders,
) -> None:
    await ingest.tenant()
    # Fails its first attempt (transiently) and is retried: two claims, an error, a retry.
    source = await ingest.source("test_flaky", config={"fail_attempts": 1, "rows": 3})
    request_id = f"req-{uuid.uuid4().hex}"
    accepted = await client.post(
        f"{BASE}/sources/{source.id}/runs",
        json={"trigger": "manual"},
        headers={**auth_headers(tenant="acme", role="admin"), "X-Request-ID": request_id},
    )
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["id"]
    assert (
        await ingest.scalar("SELECT request_id FROM ingestion_runs WHERE id = :id", id=run_id)
        == request_id
    )
    assert (await ingest.wait_final(uuid.UUID(run_id))).status == "succeeded"
    shown = await client.get(
        f"{BASE}/runs/{run_id}", headers=auth_headers(tenant="acme", role="admin")
    )
    assert shown.json()["request_id"] == request_id

    async def finished_logged() -> bool:
        return any(
            line["event"] == "run.finished" and line.get("run_id") == run_id
            for line in _lines(log_output)
        )

    await wait_until(finished_logged, timeout_s=30)
    mine = [line for line in _lines(log_output) if line.get("run_id") == run_id]
    events = [line["event"] for line in mine]
    for expected in ("run.claimed", "run.error", "run.retry_scheduled", "run.finished"):
        assert expected in events, events
    assert events.count("run.claimed") == 2
    # The runner's own lines name no ids: the run's log context gives them all.
    for line in mine:
        assert line.get("tenant_id") == "acme", line
        assert line.get("request_id") == request_id, line


async def test_a_run_not_queued_by_a_request_carries_no_request_id(
    ingest: IngestKit, log_output: io.StringIO
) -> None:
    await ingest.tenant()
    source = await ingest.source(config={"seed": 1, "sessions_per_day": 5})
    run = await ingest.queue_run(source.id, trigger="manual")
    assert (
        await ingest.scalar("SELECT request_id FROM ingestion_runs WHERE id = :id", id=run.id)
        is None
    )
    async with ingest.runner():
        assert (await ingest.wait_final(run.id)).status == "succeeded"

    async def finished_logged() -> bool:
        return any(
            line["event"] == "run.finished" and line.get("run_id") == str(run.id)
            for line in _lines(log_output)
        )

    await wait_until(finished_logged, timeout_s=30)
    mine = [line for line in _lines(log_output) if line.get("run_id") == str(run.id)]
    assert {"run.claimed", "run.finished"} <= {line["event"] for line in mine}
    for line in mine:
        assert line.get("tenant_id") == "acme", line
        assert "request_id" not in line, line
