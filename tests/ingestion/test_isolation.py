"""Imports run inside the API process: the event loop must stay responsive while they load."""

from __future__ import annotations

import time

from app.main import create_app
from tests.conftest import serve_in_process
from tests.fixtures.ingestion import IngestKit, fast_settings, wait_until
from tests.fixtures.oidc import AuthHeaders


async def test_loop_lag_stays_low_while_eight_runs_load(
    database_url: str, ingest: IngestKit, auth_headers: AuthHeaders
) -> None:
    await ingest.tenant()
    # Eight tenants would be the worst case for rollups; eight sources of one tenant is
    # the worst case for the engine (their loads take turns on the tenant's lock).
    for tenant in [f"t{i}" for i in range(8)]:
        await ingest.tenant(tenant)
    app = create_app(fast_settings(database_url, ingest_concurrency=8, loop_lag_interval_ms=20))
    headers = {t: auth_headers(tenant=t, role="admin") for t in [f"t{i}" for i in range(8)]}
    async with serve_in_process(app) as client:
        run_ids: list[tuple[str, str]] = []
        for i, (tenant, h) in enumerate(headers.items()):
            source = await client.post(
                f"/api/v1/tenants/{tenant}/sources",
                json={
                    "kind": "synthetic",
                    "name": "load",
                    "config": {"seed": i, "sessions_per_day": 200, "batch_rows": 500},
                },
                headers=h,
            )
            assert source.status_code == 201, source.text
            run = await client.post(
                f"/api/v1/tenants/{tenant}/sources/{source.json()['id']}/runs",
                json={"start": "2026-01-05", "end": "2026-01-05"},
                headers=h,
            )
            run_ids.append((tenant, run.json()["id"]))
        watchdog = app.state.watchdog
        runner = app.state.ingestion.runner

        async def all_running() -> bool:
            return len(runner.active) >= 8

        await wait_until(all_running, timeout_s=30)
        watchdog.reset_max()
        latencies: list[float] = []

        async def finished() -> bool:
            started = time.perf_counter()
            await client.get("/health/live")
            latencies.append(time.perf_counter() - started)
            statuses = [
                (await client.get(f"/api/v1/tenants/{t}/runs/{r}", headers=headers[t])).json()[
                    "status"
                ]
                for t, r in run_ids
            ]
            return all(s in ("succeeded", "failed") for s in statuses)

        await wait_until(finished, timeout_s=240, every_s=0.2)
        max_lag = watchdog.max_lag_s
        for tenant, run_id in run_ids:
            body = (
                await client.get(f"/api/v1/tenants/{tenant}/runs/{run_id}", headers=headers[tenant])
            ).json()
            assert body["status"] == "succeeded", body
    # Generous bound (2 shared cores, 8 loads, PostgreSQL and other test runs on the same
    # machine): about 70 ms measured alone, 330 ms inside a busy full-suite run. The
    # benchmark reports exact figures.
    assert max_lag < 0.5, f"max loop lag {max_lag * 1000:.0f} ms"
    assert max(latencies) < 1.0
