"""Start and stop of the ingestion engine inside the app: secret box, runner, scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar

from app.core.crypto import SecretKeyMissing, load_secret_box
from app.core.lifespan import ConfigurationError
from app.core.settings import Settings
from app.modules.ingestion.execution import IngestMetrics
from app.modules.ingestion.runner import Runner, create_worker_pool
from app.modules.ingestion.scheduler import Scheduler
from app.modules.ingestion.state import IngestionState

log = structlog.get_logger("app.ingestion")


@asynccontextmanager
async def ingestion_lifespan(app: Litestar) -> AsyncIterator[None]:
    state: Any = app.state
    settings: Settings = state.settings
    try:
        box = await asyncio.to_thread(load_secret_box, settings)
    except SecretKeyMissing as exc:
        raise ConfigurationError(str(exc)) from exc
    # Worker processes for the imports' per-row work: owned here, closed after the
    # runner stopped (no run uses them any more).
    workers = create_worker_pool(settings)
    await workers.start()
    runner = Runner(
        state.db,
        settings,
        box,
        http=getattr(state, "http", None),
        executor=getattr(state, "bigquery_pool", None),
        metrics=IngestMetrics(state.metrics.registry),
        workers=workers,
    )
    # The development launcher holds scheduling until its bootstrap has set the sources up.
    gate: asyncio.Event | None = getattr(state, "scheduling_gate", None)
    scheduler = Scheduler(state.db, settings, on_queued=runner.wake, gate=gate)
    state.ingestion = IngestionState(
        secret_box=box, runner=runner, scheduler=scheduler, workers=workers
    )
    runner_task = state.tasks.spawn(runner.run(), name="ingest-runner")
    scheduler_task = state.tasks.spawn(scheduler.run(), name="ingest-scheduler")
    try:
        yield
    finally:
        # SIGTERM: stop scheduling and claiming, let runs finish within the grace period,
        # then interrupt them and release their leases so they are queued again.
        scheduler.stop()
        await runner.stop(settings.shutdown_grace_s)
        await asyncio.wait({runner_task, scheduler_task}, timeout=5)
        await workers.close()
        log.info("ingestion.stopped")
