"""Crashes, cancellation, retries, terminal failures and shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import text

from app.modules.ingestion import service
from tests.fixtures.ingestion import TENANT, IngestKit, wait_until
from tests.ingestion.test_runs import expected_rows

DAY = date(2026, 1, 5)
ROOT = Path(__file__).resolve().parents[2]


async def test_run_in_a_killed_process_is_rescued_after_its_lease_expires(
    ingest: IngestKit,
) -> None:
    await ingest.tenant()
    source = await ingest.source(
        config={"seed": 3, "sessions_per_day": 40, "batch_rows": 60, "batch_delay_ms": 200}
    )
    expected = expected_rows(3, DAY, DAY, 40)
    run = await ingest.queue_run(source.id, DAY, DAY)
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.ingestion.worker_process",
        ingest.settings.database_url or "",
        "doomed-worker",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"},
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:

        async def loaded_some() -> bool:
            current = await ingest.run(run.id)
            return current.lease_owner == "doomed-worker" and current.progress.rows_loaded > 0

        try:
            await wait_until(loaded_some, timeout_s=90)
        except AssertionError:
            current = await ingest.run(run.id)
            raise AssertionError(
                f"worker exit={worker.returncode} owner={current.lease_owner} "
                f"status={current.status} loaded={current.progress.rows_loaded}"
            ) from None
    finally:
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
    partial = await ingest.run(run.id)
    assert partial.status == "running"
    assert 0 < partial.progress.rows_loaded < expected

    async with ingest.runner(ingest_concurrency=2):
        done = await ingest.wait_final(run.id, timeout_s=120)
    assert done.status == "succeeded", done.error
    assert done.attempt == 2
    assert await ingest.event_count() == expected
    # Rows committed by the dead worker count once; the rescue added exactly the rest.
    assert done.progress.rows_loaded == expected


async def test_cancel_through_the_database_stops_a_running_run_before_it_finishes(
    ingest: IngestKit,
) -> None:
    await ingest.tenant()
    source = await ingest.source(
        config={"seed": 4, "sessions_per_day": 400, "batch_rows": 50, "batch_delay_ms": 300}
    )
    run = await ingest.queue_run(source.id, DAY, DAY)
    async with ingest.runner() as runner:
        runner.wake()

        async def loading() -> bool:
            return (await ingest.run(run.id)).progress.rows_loaded > 0

        await wait_until(loading, timeout_s=60)
        noticed = runner.active[run.id].cancel
        async with ingest.db.session(all_tenants=True) as session:
            # Through the database flag only, as when the request lands on another replica.
            await service.cancel_run(session, TENANT, run.id)
            await session.commit()

        async def cancel_noticed() -> bool:
            return noticed.is_set()

        # The runner's own poll notices the flag (not the lease expiry, not the load's end).
        await wait_until(cancel_noticed, timeout_s=30)
        done = await ingest.wait_final(run.id, timeout_s=30)
    assert done.status == "cancelled"
    # Batches committed before the cancel stay; the one in flight was rolled back.
    assert await ingest.event_count() == done.progress.rows_loaded
    assert done.progress.rows_loaded < expected_rows(4, DAY, DAY, 400)


async def test_cancel_of_a_queued_run_is_immediate(ingest: IngestKit) -> None:
    await ingest.tenant()
    source = await ingest.source()
    run = await ingest.queue_run(source.id, DAY, DAY)
    async with ingest.db.session(all_tenants=True) as session:
        cancelled = await service.cancel_run(session, TENANT, run.id)
        await session.commit()
    assert cancelled.status == "cancelled"
    async with ingest.runner() as runner:
        runner.wake()
        assert await runner._claim() is None


@pytest.mark.usefixtures("fake_connectors")
async def test_transient_failures_retry_with_backoff_then_succeed(ingest: IngestKit) -> None:
    await ingest.tenant()
    source = await ingest.source("test_flaky", config={"fail_attempts": 2, "rows": 10})
    run = await ingest.queue_run(source.id, trigger="manual")
    async with ingest.runner():
        done = await ingest.wait_final(run.id)
    assert done.status == "succeeded", done.error
    assert done.attempt == 3
    assert done.error is None
    assert await ingest.event_count() == 10


@pytest.mark.usefixtures("fake_connectors")
async def test_transient_failures_fail_after_the_last_attempt(ingest: IngestKit) -> None:
    await ingest.tenant()
    source = await ingest.source("test_flaky", config={"fail_attempts": 9})
    run = await ingest.queue_run(source.id, trigger="manual")
    async with ingest.runner():
        done = await ingest.wait_final(run.id)
    assert done.status == "failed"
    assert done.attempt == ingest.settings.ingest_max_attempts
    assert done.error is not None
    assert done.error.error_class == "TransientError"
    assert "503" in (done.error.message or "")


@pytest.mark.usefixtures("fake_connectors")
async def test_terminal_error_fails_at_once_and_is_reported(ingest: IngestKit) -> None:
    await ingest.tenant()
    source = await ingest.source("test_flaky", config={"fail_attempts": 1, "error": "terminal"})
    run = await ingest.queue_run(source.id, trigger="manual")
    async with ingest.runner():
        done = await ingest.wait_final(run.id)
    assert done.status == "failed"
    assert done.attempt == 1
    assert done.error is not None
    assert done.error.error_class == "TerminalError"
    assert "permission denied" in (done.error.message or "")
    async with ingest.db.session(all_tenants=True) as session:
        src = await service.get_source(session, TENANT, source.id)
        assert src.last_run is not None
        assert src.last_run.status == "failed"
        assert src.consecutive_failures == 1
        # The notifications module recorded the outcome in the same transaction.
        outcomes = (
            await session.execute(
                text(
                    "SELECT count(*) FROM information_schema.tables "
                    "WHERE table_name LIKE 'notification%'"
                )
            )
        ).scalar_one()
        assert outcomes >= 1


async def test_invalid_config_fails_terminally(ingest: IngestKit) -> None:
    await ingest.tenant()
    source = await ingest.source()
    async with ingest.db.session(all_tenants=True) as session:
        await session.execute(
            text('UPDATE ingestion_sources SET config = \'{"seed": "x"}\' WHERE id = :id'),
            {"id": source.id},
        )
        await session.commit()
    run = await ingest.queue_run(source.id, DAY, DAY)
    async with ingest.runner():
        done = await ingest.wait_final(run.id)
    assert done.status == "failed"
    assert done.attempt == 1
    assert "invalid config" in (done.error.message if done.error else "")


async def test_shutdown_releases_a_run_that_outlasts_the_grace_period(
    ingest: IngestKit,
) -> None:
    await ingest.tenant()
    source = await ingest.source(
        config={"seed": 5, "sessions_per_day": 400, "batch_rows": 50, "batch_delay_ms": 300}
    )
    run = await ingest.queue_run(source.id, DAY, DAY)
    async with ingest.runner(shutdown_grace_s=0.5) as runner:
        runner.wake()

        async def loading() -> bool:
            return (await ingest.run(run.id)).progress.rows_loaded > 0

        await wait_until(loading, timeout_s=60)
    released = await ingest.run(run.id)
    assert released.status == "queued"
    assert released.lease_owner is None
    assert released.attempt == 0  # the interrupted attempt is not spent
    # The runner stopped without waiting for the load to end (it had ~12 s left).
    assert released.progress.rows_loaded < expected_rows(5, DAY, DAY, 400)
    # Another runner finishes it; counts end up as for one clean run.
    async with ingest.runner():
        done = await ingest.wait_final(run.id, timeout_s=180)
    assert done.status == "succeeded"
    assert await ingest.event_count() == expected_rows(5, DAY, DAY, 400)


async def test_shutdown_lets_a_short_run_finish_within_the_grace_period(
    ingest: IngestKit,
) -> None:
    await ingest.tenant()
    source = await ingest.source(
        config={"seed": 6, "sessions_per_day": 20, "batch_rows": 5000, "batch_delay_ms": 300}
    )
    run = await ingest.queue_run(source.id, DAY, DAY)
    async with ingest.runner(shutdown_grace_s=30) as runner:
        runner.wake()

        async def running() -> bool:
            return (await ingest.run(run.id)).status == "running"

        await wait_until(running, timeout_s=30)
    done = await ingest.run(run.id)
    assert done.status == "succeeded"
    assert await ingest.event_count() == expected_rows(6, DAY, DAY, 20)


async def test_bad_rows_are_quarantined_with_line_and_reason(ingest: IngestKit) -> None:
    await ingest.tenant()
    source = await ingest.source(
        config={"seed": 8, "sessions_per_day": 30, "batch_rows": 5000, "bad_row_every": 10}
    )
    total = expected_rows(8, DAY, DAY, 30)
    run = await ingest.queue_run(source.id, DAY, DAY)
    async with ingest.runner(ingest_quarantine_cap=5):
        done = await ingest.wait_final(run.id)
    assert done.status == "succeeded"
    bad = total // 10
    assert done.progress.rows_rejected == bad
    assert done.progress.rows_quarantined == 5
    assert done.progress.rows_loaded == total - bad
    assert await ingest.event_count() == total - bad
    async with ingest.db.session(all_tenants=True) as session:
        page = await service.list_quarantine(session, TENANT, run.id)
    assert len(page.items) == 5
    first = page.items[0]
    assert first.item == DAY.isoformat()
    assert first.line_number == 10
    assert "occurred_at" in first.reason
    assert first.raw is not None
    assert "not-a-timestamp" in first.raw
