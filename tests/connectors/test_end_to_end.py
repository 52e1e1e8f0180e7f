"""Both connectors end to end: a source created through the API, a run triggered, rows in
the events table and the dashboard's rollups, and a rerun that changes no counts."""

from __future__ import annotations

import gzip
import time
from typing import Any

import httpx
import pytest

from app.core.settings import Settings
from tests.connectors.test_sftp import HEADER, csv_rows
from tests.fixtures.bigquery import BigQueryEmulator, expected_rows
from tests.fixtures.ingestion import IngestKit, fast_settings, wait_until
from tests.fixtures.oidc import AuthHeaders
from tests.fixtures.sftp import SftpServer

BASE = "/api/v1/tenants/acme"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return fast_settings(database_url, log_level="WARNING")


@pytest.fixture
async def admin(ingest: IngestKit, auth_headers: AuthHeaders) -> dict[str, str]:
    await ingest.tenant()
    return auth_headers(tenant="acme", role="admin")


async def _run(
    client: httpx.AsyncClient, admin: dict[str, str], source_id: str, **body: Any
) -> dict[str, Any]:
    accepted = await client.post(
        f"{BASE}/sources/{source_id}/runs", json={"trigger": "manual", **body}, headers=admin
    )
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["id"]

    async def finished() -> bool:
        got = await client.get(f"{BASE}/runs/{run_id}", headers=admin)
        return got.json()["status"] in ("succeeded", "failed", "cancelled")

    try:
        await wait_until(finished, timeout_s=90)
    except AssertionError:
        got = (await client.get(f"{BASE}/runs/{run_id}", headers=admin)).json()
        raise AssertionError(f"run did not finish: {got}") from None
    run: dict[str, Any] = (await client.get(f"{BASE}/runs/{run_id}", headers=admin)).json()
    return run


async def _counts(ingest: IngestKit) -> tuple[int, int, int]:
    """(events, rollup events of all days, rollup page views) for the tenant."""
    events = await ingest.event_count()
    rolled = await ingest.scalar(
        "SELECT coalesce(sum(events), 0) FROM stats_rollups "
        "WHERE tenant_id = 'acme' AND grain = 1 AND dim = 0"
    )
    pageviews = await ingest.scalar(
        "SELECT coalesce(sum(pageviews), 0) FROM stats_rollups "
        "WHERE tenant_id = 'acme' AND grain = 1 AND dim = 0"
    )
    return events, int(rolled), int(pageviews)


async def test_bigquery_source_end_to_end(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    ingest: IngestKit,
    bigquery_emulator: BigQueryEmulator,
) -> None:
    created = await client.post(
        f"{BASE}/sources",
        json={
            "kind": "bigquery_ga4",
            "name": "GA4 export",
            "config": bigquery_emulator.config(include_intraday=True),
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    source = created.json()
    checked = await client.post(f"{BASE}/sources/{source['id']}/test", headers=admin)
    assert checked.status_code == 200
    assert checked.json()["ok"], checked.json()

    # The default window: the last reload_days (3) days and today (intraday only).
    run = await _run(client, admin, source["id"])
    assert run["status"] == "succeeded", run
    data = bigquery_emulator.data
    expected = sum(expected_rows(n) for n in data.daily.values()) + expected_rows(
        data.intraday[data.today]
    )
    events, rolled, pageviews = await _counts(ingest)
    assert events == expected == run["progress"]["rows_loaded"]
    assert rolled == events  # the loader refreshed the rollups
    users = sum(data.daily.values()) + data.intraday[data.today]
    assert pageviews == users  # one page_view per user and day
    assert run["progress"]["rows_quarantined"] == 0

    again = await _run(client, admin, source["id"])
    assert again["status"] == "succeeded", again
    assert again["progress"]["rows_loaded"] == 0
    assert again["progress"]["rows_duplicate"] == expected
    assert await _counts(ingest) == (events, rolled, pageviews)
    after = (await client.get(f"{BASE}/sources/{source['id']}", headers=admin)).json()
    assert after["cursor"] == {"last_window_end": data.today.isoformat()}


async def test_bigquery_missing_dataset_fails_the_run_at_once(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    bigquery_emulator: BigQueryEmulator,
) -> None:
    source = (
        await client.post(
            f"{BASE}/sources",
            json={
                "kind": "bigquery_ga4",
                "name": "GA4 export",
                "config": bigquery_emulator.config(dataset="analytics_404"),
            },
            headers=admin,
        )
    ).json()
    run = await _run(client, admin, source["id"])
    assert run["status"] == "failed"
    assert run["attempt"] == 1  # terminal: not retried
    assert "analytics_<property id>" in run["error"]["message"]


def _sftp_source(server: SftpServer, **config: Any) -> dict[str, Any]:
    return {
        "kind": "sftp",
        "name": "drops",
        "config": server.config(**config),
        "secrets": server.secrets(),
    }


async def test_sftp_source_end_to_end(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    ingest: IngestKit,
    sftp_server: SftpServer,
) -> None:
    now = time.time()
    await sftp_server.write("a.csv", (HEADER + csv_rows(40)).encode(), mtime=now - 30)
    bad = (HEADER + "x1,page_view,not-a-time,u,s,/,,\n" + csv_rows(5, start=100)).encode()
    await sftp_server.write("b.csv.gz", gzip.compress(bad), mtime=now - 20)
    whole = gzip.compress((HEADER + csv_rows(500, start=1000)).encode())
    await sftp_server.write("c.csv.gz", whole[: len(whole) // 2], mtime=now - 10)
    created = await client.post(f"{BASE}/sources", json=_sftp_source(sftp_server), headers=admin)
    assert created.status_code == 201, created.text
    source = created.json()
    assert source["secret_fields"] == ["password"]
    checked = (await client.post(f"{BASE}/sources/{source['id']}/test", headers=admin)).json()
    assert checked["ok"], checked

    run = await _run(client, admin, source["id"])
    assert run["status"] == "succeeded", run
    events, rolled, pageviews = await _counts(ingest)
    assert events == 45 == run["progress"]["rows_loaded"]
    assert rolled == events
    assert pageviews == events
    quarantine = (await client.get(f"{BASE}/runs/{run['id']}/quarantine", headers=admin)).json()[
        "items"
    ]
    found = sorted((q["item"], q["line_number"], q["reason"][:40]) for q in quarantine)
    assert found[0] == ("/incoming/b.csv.gz", 2, "bad timestamp 'not-a-time'")
    assert found[1][0] == "/incoming/c.csv.gz"
    assert (
        "truncated gzip"
        in quarantine[[q["item"] for q in quarantine].index("/incoming/c.csv.gz")]["reason"]
    )
    ledger = await ingest.scalar(
        "SELECT string_agg(path, ',' ORDER BY path) FROM ingestion_file_ledger"
    )
    assert ledger == "/incoming/a.csv,/incoming/b.csv.gz"

    # A rerun changes no counts: the ledger skips both imported files.
    again = await _run(client, admin, source["id"])
    assert again["status"] == "succeeded", again
    assert again["progress"]["rows_loaded"] == again["progress"]["rows_duplicate"] == 0
    assert await _counts(ingest) == (events, rolled, pageviews)

    # A re-upload with new content is imported again; the overlap deduplicates.
    await sftp_server.write("a.csv", (HEADER + csv_rows(50)).encode(), mtime=time.time() - 5)
    third = await _run(client, admin, source["id"])
    assert third["status"] == "succeeded", third
    assert third["progress"]["rows_loaded"] == 10
    assert third["progress"]["rows_duplicate"] == 40
    assert (await _counts(ingest))[0] == 55


async def test_sftp_dropped_connection_retries_the_file(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    ingest: IngestKit,
    sftp_server: SftpServer,
) -> None:
    # Small: one chunk; the drop comes before the file was read to its end.
    rows = 600
    await sftp_server.write("big.csv", (HEADER + csv_rows(rows)).encode())
    sftp_server.faults.drop_after_bytes = 20_000  # of ~33 kB: mid-file, after a batch
    config = {"block_size": 4096, "max_requests": 1, "batch_rows": 150}
    source = (
        await client.post(
            f"{BASE}/sources", json=_sftp_source(sftp_server, **config), headers=admin
        )
    ).json()
    run = await _run(client, admin, source["id"])
    assert run["status"] == "succeeded", run
    assert run["attempt"] == 2  # the first attempt lost the connection
    assert sftp_server.faults.drops == 1
    # Nothing of the first attempt was committed: exactly the file, once.
    assert await ingest.event_count() == rows
    assert run["progress"]["rows_duplicate"] == 0


async def test_sftp_wrong_password_fails_without_retry(
    client: httpx.AsyncClient, admin: dict[str, str], sftp_server: SftpServer
) -> None:
    payload = _sftp_source(sftp_server)
    payload["secrets"] = {"password": "wrong"}
    source = (await client.post(f"{BASE}/sources", json=payload, headers=admin)).json()
    run = await _run(client, admin, source["id"])
    assert run["status"] == "failed"
    assert run["attempt"] == 1
    assert "authentication failed" in run["error"]["message"]
    assert "wrong" not in run["error"]["message"]


async def test_an_unreadable_plain_csv_is_dropped_whole_and_the_next_file_loads(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    ingest: IngestKit,
    sftp_server: SftpServer,
) -> None:
    """A plain CSV is parsed in one pass: its first rows are loaded (uncommitted) before
    the unreadable line shows up. The connector abandons the file: those rows are
    rolled back, the reason is quarantined, and the next file still imports."""
    now = time.time()
    oversized = "x" * 200_000  # over the csv module's field limit: csv.Error
    corrupt = HEADER + csv_rows(30) + f'e999,page_view,2026-01-05T10:00:00Z,u,s,"{oversized}",,\n'
    await sftp_server.write("a-corrupt.csv", corrupt.encode(), mtime=now - 30)
    await sftp_server.write(
        "b-good.csv", (HEADER + csv_rows(7, start=500)).encode(), mtime=now - 20
    )
    created = await client.post(
        f"{BASE}/sources", json=_sftp_source(sftp_server, batch_rows=10), headers=admin
    )
    assert created.status_code == 201, created.text
    run = await _run(client, admin, created.json()["id"])
    assert run["status"] == "succeeded", run
    assert run["progress"]["rows_loaded"] == 7
    events, rolled, _ = await _counts(ingest)
    assert (events, rolled) == (7, 7)
    quarantine = (await client.get(f"{BASE}/runs/{run['id']}/quarantine", headers=admin)).json()[
        "items"
    ]
    assert [(q["item"], q["reason"]) for q in quarantine] == [
        (
            "/incoming/a-corrupt.csv",
            "file not imported: unreadable CSV: field larger than field limit (131072)",
        )
    ]
    ledger = await ingest.scalar(
        "SELECT string_agg(path, ',' ORDER BY path) FROM ingestion_file_ledger"
    )
    assert ledger == "/incoming/b-good.csv"
