"""File imports through the worker processes, with real faults: a killed worker, a cancel
while parsing, a row that crashes the parser, and statistics after a first import."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from datetime import date
from typing import Any

import httpx
import pytest

from app.core.settings import Settings
from app.core.workers import WorkerLost, WorkerPool
from app.modules.ingestion import service
from app.modules.ingestion.connectors import get_connector
from app.modules.ingestion.connectors.base import DateWindow
from app.modules.ingestion.connectors.files_stream import CHUNK_BYTES
from app.modules.ingestion.connectors.synthetic import iter_events
from app.modules.ingestion.prepare import prepare_rows
from app.modules.ingestion.runner import Runner
from tests.connectors.helpers import collect, extract_context
from tests.connectors.test_sftp import HEADER, csv_rows
from tests.fixtures.ingestion import TENANT, IngestKit, fast_settings, wait_until
from tests.fixtures.oidc import AuthHeaders
from tests.fixtures.sftp import SftpServer

BIG_ROWS = 300_000  # about 17 MB of CSV: many times a worker's chunk


@pytest.fixture
def settings(database_url: str) -> Settings:
    return fast_settings(database_url, log_level="WARNING", ingest_analyze_min_rows=1)


async def _big_file(server: SftpServer, rows: int = BIG_ROWS) -> int:
    body = (HEADER + csv_rows(rows)).encode()
    assert len(body) > 10 * CHUNK_BYTES
    await server.write("big.csv", body, mtime=time.time() - 60)
    return rows


async def _sftp_source(ingest: IngestKit, server: SftpServer) -> Any:
    await ingest.tenant()
    return await ingest.source(
        "sftp", config=server.config(idle_timeout_s=60), secrets=server.secrets()
    )


async def _parsing(runner: Runner, run_id: Any) -> None:
    """Wait until the run's first chunks came back from the workers."""

    async def started() -> bool:
        active = runner.active.get(run_id)
        return active is not None and active.progress.rows_read > 0

    await wait_until(started, timeout_s=90, every_s=0.02)


async def test_a_killed_worker_fails_the_attempt_and_the_retry_loads_the_file_exactly_once(
    ingest: IngestKit, sftp_server: SftpServer
) -> None:
    rows = await _big_file(sftp_server)
    source = await _sftp_source(ingest, sftp_server)
    run = await ingest.queue_run(source.id, trigger="manual")
    async with ingest.runner() as runner:
        runner.wake()
        await _parsing(runner, run.id)
        before = runner.workers.pids()
        os.kill(before[0], signal.SIGKILL)  # a real fault: the process is gone
        done = await ingest.wait_final(run.id, timeout_s=240)
        after = runner.workers.pids()
    assert done.status == "succeeded", done.error
    assert done.attempt == 2  # the attempt that lost its worker failed, transiently
    assert before[0] not in after  # the pool was replaced
    # Nothing of the failed attempt was committed, nothing is doubled.
    assert await ingest.event_count() == rows
    assert done.progress.rows_loaded == rows
    assert done.progress.rows_duplicate == 0


async def test_cancel_while_parsing_stops_the_run_and_frees_the_workers(
    ingest: IngestKit, sftp_server: SftpServer
) -> None:
    await _big_file(sftp_server)
    source = await _sftp_source(ingest, sftp_server)
    run = await ingest.queue_run(source.id, trigger="manual")
    async with ingest.runner() as runner:
        runner.wake()
        await _parsing(runner, run.id)
        async with ingest.db.session() as session:
            await service.cancel_run(session, TENANT, run.id)
            await session.commit()
        done = await ingest.wait_final(run.id, timeout_s=30)
        # The chunks that were queued for the workers were dropped with the run: a new
        # call does not wait behind the rest of the file.
        assert await asyncio.wait_for(runner.workers.run(os.getpid), 5) in runner.workers.pids()
    assert done.status == "cancelled"
    assert await ingest.event_count() == 0  # the file commits all or nothing


async def test_a_row_that_crashes_validation_is_quarantined_and_the_rest_loads(
    ingest: IngestKit, sftp_server: SftpServer
) -> None:
    lines = [
        {"event_id": "ok1", "event_name": "page_view", "occurred_at": "2026-01-05T10:00:00Z"},
        # Decimal overflow: not a validation error, a crash of the conversion itself.
        {
            "event_id": "poison",
            "event_name": "purchase",
            "occurred_at": "2026-01-05T10:00:00Z",
            "revenue": "1e999999999",
        },
        {"event_id": "ok2", "event_name": "page_view", "occurred_at": "2026-01-05T11:00:00Z"},
    ]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    await sftp_server.write("poison.jsonl", body, mtime=time.time() - 60)
    await ingest.tenant()
    source = await ingest.source(
        "sftp", config=sftp_server.config(format="jsonl"), secrets=sftp_server.secrets()
    )
    run = await ingest.queue_run(source.id, trigger="manual")
    async with ingest.runner() as runner:
        runner.wake()
        done = await ingest.wait_final(run.id, timeout_s=60)
    assert done.status == "succeeded", done.error
    assert done.progress.rows_loaded == 2
    reason = await ingest.scalar(
        "SELECT reason FROM ingestion_quarantine WHERE run_id = :r AND line_number = 2",
        r=run.id,
    )
    assert "Overflow" in reason


def test_prepared_rows_keep_line_numbers_and_reasons_of_every_kind_of_bad_row() -> None:
    good = {"event_id": "a", "event_name": "x", "occurred_at": "2026-01-05T10:00:00Z"}
    rows: list[Any] = [
        good,
        {**good, "event_id": "b", "page_path": "\udcff"},  # not encodable: a crash
        {**good, "event_id": "c", "occurred_at": "nope"},  # a plain validation error
        ["not", "a", "mapping"],
    ]
    prepared = prepare_rows("acme", None, rows, None, 10)
    assert prepared.rows == 1
    assert prepared.copy.startswith(b"acme\ta\tx\t")
    assert [r.line_number for r in prepared.rejects] == [11, 12, 13]
    assert "UnicodeEncodeError" in prepared.rejects[0].reason
    assert prepared.rejects[2].reason == "row is not an object"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_pool_replaces_a_dead_worker_and_stops_its_processes_at_close() -> None:
    pool = WorkerPool(1)  # one worker: the next call cannot go elsewhere
    await pool.start()
    try:
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerLost, match="worker process died"):
            await pool.run(os.getpid)
        assert await pool.run(os.getpid) != pid
        running = pool.pids()
        assert running
        assert pid not in running
    finally:
        await pool.close()
    assert pool.pids() == []

    async def all_gone() -> bool:
        return not any(_alive(p) for p in running)

    await wait_until(all_gone, timeout_s=15)
    with pytest.raises(WorkerLost, match="shut down"):
        await pool.run(os.getpid)


_OWNER_SCRIPT = """
import asyncio, json, signal, sys
from app.core.workers import WorkerPool

async def main():
    pool = WorkerPool(2)
    await pool.start()
    print("pids", json.dumps(pool.pids()), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, signal.pause)

asyncio.run(main())
"""


async def test_workers_exit_when_the_process_that_owns_them_is_killed() -> None:
    """A killed app (SIGKILL, out of memory) must not leave its worker processes (and
    the forkserver they keep alive) running for ever."""
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OWNER_SCRIPT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert owner.stdout is not None
        line = b""
        while not line.startswith(b"pids "):  # log lines may come first
            line = await asyncio.wait_for(owner.stdout.readline(), timeout=60)
            assert line, "the owner process ended before starting its workers"
        workers = json.loads(line[5:])
        assert len(workers) == 2
        assert all(_alive(p) for p in workers)
    finally:
        owner.kill()  # SIGKILL: no shutdown code runs
        await owner.wait()

    async def all_gone() -> bool:
        return not any(_alive(p) for p in workers)

    await wait_until(all_gone, timeout_s=30)


async def test_a_hung_worker_call_times_out_and_the_workers_are_replaced() -> None:
    pool = WorkerPool(1, call_timeout_s=0.5)
    await pool.start()
    try:
        (hung,) = pool.pids()
        with pytest.raises(WorkerLost, match=r"ran for more than 0\.5 s"):
            await pool.run(signal.pause)  # never returns by itself
        assert not _alive(hung)
        fresh = await pool.run(os.getpid)
        assert fresh != hung
        # Workers run below the app process's priority.
        assert os.getpriority(os.PRIO_PROCESS, fresh) == os.getpriority(os.PRIO_PROCESS, 0) + 10
    finally:
        await pool.close()


async def test_a_new_tenants_first_import_is_analysed_and_a_raw_events_query_answers(
    client: httpx.AsyncClient,
    ingest: IngestKit,
    sftp_server: SftpServer,
    auth_headers: AuthHeaders,
) -> None:
    """#14: the raw-events path (a half-hour-offset timezone is not a union of UTC hours)
    must not depend on autovacuum having analysed the new rows."""
    admin = auth_headers(tenant="acme", role="admin")
    await ingest.tenant()
    await sftp_server.write("first.csv", (HEADER + csv_rows(2000)).encode(), mtime=time.time() - 60)
    base = "/api/v1/tenants/acme"
    created = await client.post(
        f"{base}/sources",
        json={
            "kind": "sftp",
            "name": "drop",
            "config": sftp_server.config(),
            "secrets": sftp_server.secrets(),
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    analysed_before = await ingest.scalar(
        "SELECT coalesce(analyze_count, 0) FROM pg_stat_user_tables WHERE relname = 'events'"
    )
    accepted = await client.post(
        f"{base}/sources/{created.json()['id']}/runs", json={"trigger": "manual"}, headers=admin
    )
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["id"]

    async def finished() -> bool:
        got = (await client.get(f"{base}/runs/{run_id}", headers=admin)).json()
        return got["status"] in ("succeeded", "failed", "cancelled")

    await wait_until(finished, timeout_s=90)
    run = (await client.get(f"{base}/runs/{run_id}", headers=admin)).json()
    assert run["status"] == "succeeded", run
    # At once, without waiting for autovacuum: the run analysed the table itself.
    answer = await client.post(
        f"{base}/stats/query",
        json={
            "metrics": ["events", "users", "sessions"],
            "dimensions": ["time:day", "page_path"],
            "date_range": ["2026-01-01", "2026-01-10"],
            "timezone": "Asia/Kolkata",
        },
        headers=auth_headers(tenant="acme", role="viewer"),
    )
    assert answer.status_code == 200, answer.text
    analysed_after = await ingest.scalar(
        "SELECT coalesce(analyze_count, 0) FROM pg_stat_user_tables WHERE relname = 'events'"
    )
    assert analysed_after > analysed_before


async def test_synthetic_days_are_generated_in_the_workers_in_bounded_pieces(
    worker_pool: WorkerPool,
) -> None:
    connector = get_connector("synthetic")
    window = DateWindow(date(2026, 1, 5), date(2026, 1, 6))
    ctx = extract_context(
        connector,
        {"seed": 5, "sessions_per_day": 300, "batch_rows": 400, "bad_row_every": 97},
        window=window,
        workers=worker_pool,
    )
    batches = await collect(connector, ctx)
    pieces = [b.prepared for b in batches if b.prepared is not None]
    assert {p.pid for p in pieces} <= set(worker_pool.pids())
    assert max(p.rows + len(p.rejects) for p in pieces) <= 400
    expected = sum(1 for _ in iter_events(5, window, 300))
    assert sum(p.rows + len(p.rejects) for p in pieces) == expected
    rejects = [r for p in pieces for r in p.rejects]
    assert rejects  # every 97th row is malformed on purpose, with its line in the day
    assert all(r.line_number is not None and r.line_number % 97 == 0 for r in rejects)
    assert [b.cursor for b in batches if b.cursor] == [
        {"last_completed_day": "2026-01-05"},
        {"last_completed_day": "2026-01-06"},
    ]
