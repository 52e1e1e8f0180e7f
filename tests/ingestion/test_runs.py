from __future__ import annotations

import asyncio
from datetime import date

from app.modules.ingestion.connectors.base import DateWindow
from app.modules.ingestion.connectors.synthetic import iter_events
from tests.fixtures.ingestion import IngestKit

DAY = date(2026, 1, 5)


def expected_rows(seed: int, start: date, end: date, sessions: int) -> int:
    return sum(1 for _ in iter_events(seed, DateWindow(start, end), sessions))


async def test_manual_run_loads_a_window_and_a_rerun_adds_nothing(ingest: IngestKit) -> None:
    await ingest.tenant()
    source = await ingest.source(config={"seed": 7, "sessions_per_day": 300, "batch_rows": 700})
    expected = expected_rows(7, DAY, date(2026, 1, 6), 300)
    async with ingest.runner() as runner:
        first = await ingest.queue_run(source.id, DAY, date(2026, 1, 6))
        runner.wake()
        done = await ingest.wait_final(first.id)
        assert done.status == "succeeded", done.error
        assert done.progress.rows_loaded == expected
        assert done.progress.rows_duplicate == 0
        assert done.attempt == 1
        assert await ingest.event_count() == expected

        second = await ingest.queue_run(source.id, DAY, date(2026, 1, 6))
        again = await ingest.wait_final(second.id)
        assert again.status == "succeeded"
        assert again.progress.rows_loaded == 0
        assert again.progress.rows_duplicate == expected
    assert await ingest.event_count() == expected
    version = await ingest.scalar("SELECT version FROM tenant_data_versions WHERE tenant_id='acme'")
    assert version >= 1


async def test_ten_runs_in_parallel_complete_with_correct_counts(ingest: IngestKit) -> None:
    await ingest.tenant()
    sources = [
        await ingest.source(config={"seed": i, "sessions_per_day": 60, "batch_rows": 5000})
        for i in range(10)
    ]
    expected = sum(expected_rows(i, DAY, DAY, 60) for i in range(10))
    async with ingest.runner(ingest_concurrency=10) as runner:
        runs = [await ingest.queue_run(s.id, DAY, DAY) for s in sources]
        runner.wake()
        seen_parallel = 0

        async def all_done() -> bool:
            nonlocal seen_parallel
            seen_parallel = max(seen_parallel, len(runner.active))
            statuses = [(await ingest.run(r.id)).status for r in runs]
            return all(s == "succeeded" for s in statuses)

        from tests.fixtures.ingestion import wait_until

        await wait_until(all_done, timeout_s=90)
    finals = await asyncio.gather(*(ingest.run(r.id) for r in runs))
    assert sum(r.progress.rows_loaded for r in finals) == expected
    assert await ingest.event_count() == expected
    assert seen_parallel > 1


async def test_a_batch_committed_backfill_keeps_rollups_equal_to_a_full_rebuild(
    ingest: IngestKit,
) -> None:
    """Synthetic runs commit batch by batch: each commit adds its rows to the rollups
    (no day is re-read). Two overlapping runs, the second one touching days the first
    loaded, end with rollups equal to a rebuild: sums and exact counts equal, sketch
    estimates within the bound."""
    from app.modules.events.rollups import rebuild_rollups
    from app.modules.events.sketches import RELATIVE_ERROR, merge_sketches

    await ingest.tenant(timezone="Asia/Kolkata")
    first = await ingest.source(config={"seed": 8, "sessions_per_day": 120, "batch_rows": 250})
    second = await ingest.source(config={"seed": 9, "sessions_per_day": 80, "batch_rows": 300})
    async with ingest.runner() as runner:
        runs = [
            await ingest.queue_run(first.id, DAY, date(2026, 1, 6)),
            await ingest.queue_run(second.id, date(2026, 1, 6), date(2026, 1, 7)),
        ]
        runner.wake()
        for run in runs:
            done = await ingest.wait_final(run.id, timeout_s=120)
            assert done.status == "succeeded", done.error
        from tests.fixtures.ingestion import wait_until

        # A successful run then derives the week rows of the (ended) weeks it loaded.
        async def weeks_built() -> bool:
            return bool(
                await ingest.scalar(
                    "SELECT count(*) FROM stats_rollups WHERE tenant_id = 'acme' AND grain = 2"
                )
            )

        await wait_until(weeks_built, timeout_s=60)
    query = (
        "SELECT grain, dim, bucket, value, events, pageviews, new_users, conversions,"
        " engagement_msec, revenue, users_count, sessions_count,"
        " users_hll, sessions_hll, engaged_hll, converting_hll"
        " FROM stats_rollups WHERE tenant_id = 'acme' AND grain IN (0, 1)"
        " ORDER BY grain, dim, bucket, value"
    )
    from sqlalchemy import text

    async with ingest.db.session() as session:
        incremental = (await session.execute(text(query))).all()
        await rebuild_rollups(session, "acme")
        await session.commit()
        rebuilt = (await session.execute(text(query))).all()
    assert incremental
    assert [r[:12] for r in incremental] == [r[:12] for r in rebuilt]

    def estimate(blob: bytes | None) -> float:
        return merge_sketches([blob]).estimate if blob is not None else 0.0

    for mine, theirs in zip(incremental, rebuilt, strict=True):
        for a, b in zip(mine[12:], theirs[12:], strict=True):
            assert abs(estimate(a) - estimate(b)) <= RELATIVE_ERROR * max(1.0, estimate(b))
