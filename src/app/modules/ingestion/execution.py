"""Executing one claimed run: load, heartbeat, cancel, conclude.

The :class:`RunExecution` half of the runner (``ingestion.runner.Runner`` is the other:
the claim loop, reaping and shutdown). A run executes in its own task, with two helper
tasks: the heartbeat renewing its lease (a lost lease stops the run without committing
anything further) and the cancel watcher. The run's ids are bound to the log context of
that task, so every line logged for the run carries them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import text

from app.core.backoff import backoff_s
from app.core.crypto import SecretBox
from app.core.db import Database
from app.core.outbound import policy_for
from app.core.settings import Settings
from app.core.workers import WorkerPool
from app.modules.events import compact_tenant_rollups
from app.modules.ingestion import repository
from app.modules.ingestion.connectors import get_connector
from app.modules.ingestion.connectors.base import (
    Batch,
    DateWindow,
    ExtractContext,
    LedgerEntry,
    Progress,
    RunCancelled,
    TerminalError,
)
from app.modules.ingestion.errors import describe, is_transient
from app.modules.ingestion.loader import BatchLoader, LeaseLost
from app.modules.ingestion.outcomes import record_outcome
from app.modules.ingestion.secrets import open_secrets
from app.modules.notifications import EmailLinks
from app.modules.tenants import get_tenant_config

log = structlog.get_logger("app.ingestion.runner")

# After a cancel is noticed, a run gets this long to reach a batch boundary on its own.
CANCEL_GRACE_S = 2.0
DB_STEP_TIMEOUT_S = 10.0
ANALYZE_TIMEOUT_S = 300.0
COMPACT_TIMEOUT_S = 600.0
_ANALYZE_EVENTS = (
    text("SET LOCAL statement_timeout = '300s'"),
    # The owner's function (migration 0006i): the app's role owns no table to analyse.
    text("SELECT pulse_analyze_events()"),
)


def run_log_context(run: repository.ClaimedRun | repository.ExpiredRun) -> dict[str, str]:
    """The ids every log line of a run carries: its tenant, itself, and the request that
    queued it (manual runs and backfills)."""
    context = {"tenant_id": run.tenant_id, "run_id": str(run.id)}
    if run.request_id:
        context["request_id"] = run.request_id
    return context


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.finished = Counter(
            "pulse_ingest_runs_finished",
            "Runs reaching an outcome (or a retry), by status.",
            ["status"],
            registry=registry,
        )
        self.rows_loaded = Counter(
            "pulse_ingest_rows_loaded", "New events committed by imports.", registry=registry
        )
        self.active = Gauge(
            "pulse_ingest_runs_active", "Runs executing in this process.", registry=registry
        )


@dataclass
class ActiveRun:
    run: repository.ClaimedRun
    progress: Progress = field(default_factory=Progress)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    lease_lost: bool = False
    task: asyncio.Task[None] | None = None
    loaded: int = 0  # new events the run committed


class RunExecution:
    """What executing one run needs of the runner, and the steps. Set by ``Runner``."""

    db: Database
    settings: Settings
    box: SecretBox
    owner: str
    http: httpx.AsyncClient | None
    executor: ThreadPoolExecutor | None
    metrics: IngestMetrics | None
    workers: WorkerPool
    links: EmailLinks
    lease_s: float
    heartbeat_s: float
    db_turns: asyncio.Semaphore
    _analyze_lock: asyncio.Lock
    _stopping: bool

    async def _execute(self, active: ActiveRun) -> None:
        run = active.run
        # This task's context (copied into the tasks it starts): every line logged for
        # the run - runner, connector, loader, event store, alert - carries the ids.
        structlog.contextvars.bind_contextvars(**run_log_context(run))
        log.info("run.claimed", source_id=str(run.source_id), attempt=run.attempt, owner=self.owner)
        load = asyncio.create_task(self._load(active), name=f"ingest-load-{run.id}")
        helpers = [
            asyncio.create_task(self._heartbeat(active, load)),
            asyncio.create_task(self._watch_cancel(active, load)),
        ]
        try:
            try:
                await asyncio.wait({load})
            except asyncio.CancelledError:
                # Shutdown after the grace period: stop, roll back, hand the run back.
                load.cancel()
                await asyncio.wait({load}, timeout=DB_STEP_TIMEOUT_S)
                await self._release(run)
                raise
            await self._conclude(active, load)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _conclude(self, active: ActiveRun, load: asyncio.Task[None]) -> None:
        run = active.run
        exc: BaseException | None = None if load.cancelled() else load.exception()
        if active.lease_lost or isinstance(exc, LeaseLost):
            log.warning("run.lease_lost", owner=self.owner)
            return
        if load.cancelled() or isinstance(exc, RunCancelled):
            await self._record(run, "cancelled")
        elif exc is None:
            await self._record(run, "succeeded")
            if active.loaded:
                # After the run is reported: a cancel or a lost lease can no longer
                # touch a run whose rows are committed.
                await self._compact(run)
        else:
            await self._failed(run, exc)

    async def _record(self, run: repository.ClaimedRun, status: str, **error: Any) -> None:
        try:
            async with (
                asyncio.timeout(DB_STEP_TIMEOUT_S),
                self.db.session(run.tenant_id) as session,
            ):
                await record_outcome(
                    session, run.id, owner=self.owner, status=status, links=self.links, **error
                )
                await session.commit()
        except Exception:
            # The lease will expire and the reaper re-queues the run; loading is idempotent.
            log.exception("run.outcome_not_recorded", status=status)
            return
        if self.metrics:
            self.metrics.finished.labels(status).inc()

    async def _failed(self, run: repository.ClaimedRun, exc: BaseException) -> None:
        error_class, message = describe(exc)
        transient = is_transient(exc)
        log_method = log.warning if transient else log.error
        log_method(
            "run.error",
            attempt=run.attempt,
            transient=transient,
            error_class=error_class,
            error=message,
            exc_info=exc if not isinstance(exc, TerminalError) else None,
        )
        if not transient or run.attempt >= run.max_attempts:
            await self._record(run, "failed", error_class=error_class, error_message=message)
            return
        delay = backoff_s(
            run.attempt,
            base_s=self.settings.ingest_retry_base_s,
            max_s=self.settings.ingest_retry_max_s,
        )
        try:
            async with (
                asyncio.timeout(DB_STEP_TIMEOUT_S),
                self.db.session(run.tenant_id) as session,
            ):
                await repository.retry_run(
                    session,
                    run.id,
                    owner=self.owner,
                    delay_s=delay,
                    error_class=error_class,
                    error_message=message,
                )
                await session.commit()
        except Exception:
            log.exception("run.retry_not_recorded")
            return
        if self.metrics:
            self.metrics.finished.labels("retrying").inc()
        log.info("run.retry_scheduled", delay_s=round(delay, 2))

    async def _release(self, run: repository.ClaimedRun) -> None:
        try:
            async with (
                asyncio.timeout(DB_STEP_TIMEOUT_S),
                self.db.session(run.tenant_id) as session,
            ):
                await repository.release_run(session, run.id, owner=self.owner)
                await session.commit()
            log.info("run.released", owner=self.owner)
        except Exception:
            log.exception("run.release_failed")

    async def _heartbeat(self, active: ActiveRun, load: asyncio.Task[None]) -> None:
        run = active.run
        last_ok = time.monotonic()
        while not load.done():
            await asyncio.sleep(self.heartbeat_s)
            try:
                async with (
                    asyncio.timeout(self.lease_s / 2),
                    self.db.session(run.tenant_id) as session,
                ):
                    state = await repository.renew_lease(
                        session,
                        run.id,
                        owner=self.owner,
                        lease_s=self.lease_s,
                        progress=active.progress,
                    )
                    await session.commit()
            except Exception as exc:
                log.warning("run.heartbeat_failed", error=type(exc).__name__)
                if time.monotonic() - last_ok < self.lease_s:
                    continue
                state = repository.LeaseState(held=False, cancel_requested=False)
            if not state.held:
                active.lease_lost = True
                load.cancel()
                return
            last_ok = time.monotonic()
            if state.cancel_requested:
                active.cancel.set()

    async def _watch_cancel(self, active: ActiveRun, load: asyncio.Task[None]) -> None:
        await active.cancel.wait()
        log.info("run.cancel_requested")
        _, pending = await asyncio.wait({load}, timeout=CANCEL_GRACE_S)
        if pending:
            load.cancel()  # not at a batch boundary in time: interrupt the step

    async def _load(self, active: ActiveRun) -> None:
        run = active.run
        async with asyncio.timeout(DB_STEP_TIMEOUT_S), self.db.session(run.tenant_id) as session:
            source = await repository.source_for_run(session, run.source_id)
            timezone = (await get_tenant_config(session, run.tenant_id)).timezone
        if source is None:
            raise TerminalError("the source was deleted")
        connector = get_connector(source.kind)
        if connector is None:
            raise TerminalError(f"no connector for kind {source.kind!r}")
        try:
            config = msgspec.convert(source.config, connector.config_type)
        except msgspec.ValidationError as exc:
            raise TerminalError(f"invalid config: {exc}") from None
        secrets = open_secrets(
            self.box,
            connector,
            tenant_id=source.tenant_id,
            source_id=source.id,
            ciphertext=source.secrets_ciphertext,
        )
        window = (
            DateWindow(run.window_start, run.window_end)
            if run.window_start and run.window_end
            else None
        )

        async def imported_files() -> dict[str, list[LedgerEntry]]:
            async with asyncio.timeout(DB_STEP_TIMEOUT_S), self.db.session(source.tenant_id) as s:
                return await repository.imported_files(s, source.id)

        ctx = ExtractContext(
            tenant_id=source.tenant_id,
            source_id=source.id,
            config=config,
            secrets=secrets,
            timezone=timezone,
            http=self.http,
            executor=self.executor,
            workers=self.workers,
            run_id=run.id,
            attempt=run.attempt,
            window=window,
            files=run.files,
            cursor=dict(source.cursor),
            batch_rows=self.settings.ingest_batch_rows,
            progress=active.progress,
            is_cancelled=lambda: active.cancel.is_set() or self._stopping,
            imported_files=imported_files,
            outbound=policy_for(self.settings),
        )
        loader = BatchLoader(
            self.db,
            run_id=run.id,
            tenant_id=source.tenant_id,
            source_id=source.id,
            owner=self.owner,
            lease_s=self.lease_s,
            batch_rows=self.settings.ingest_batch_rows,
            quarantine_cap=self.settings.ingest_quarantine_cap,
            already_quarantined=run.rows_quarantined,
            progress=active.progress,
            workers=self.workers,
            lock_wait_s=self.settings.ingest_load_lock_wait_s,
            work_mem_mb=self.settings.ingest_work_mem_mb,
            db_turns=self.db_turns,
            concurrency=self.settings.ingest_concurrency,
        )
        active.progress.report(stage="extracting")
        batches: AsyncIterator[Batch] = connector.extract(ctx)
        try:
            async for batch in batches:
                self._check(active)
                await loader.add(batch)
                if loader.cancel_requested:
                    active.cancel.set()
            self._check(active)
            await loader.commit()
        finally:
            await loader.discard()
            aclose = getattr(batches, "aclose", None)
            if aclose is not None:
                await aclose()
        active.loaded = loader.committed.loaded
        if self.metrics:
            self.metrics.rows_loaded.inc(loader.committed.loaded)
        if loader.committed.loaded >= self.settings.ingest_analyze_min_rows:
            active.progress.report(stage="analysing")
            await self._analyze(run)

    async def _compact(self, run: repository.ClaimedRun) -> None:
        """Week and month rollups for the weeks and months the import completed or
        changed (its own transaction deleted the changed ones). A failure only costs
        speed (the day rows answer meanwhile; logged), never the run."""
        try:
            async with asyncio.timeout(COMPACT_TIMEOUT_S):
                await compact_tenant_rollups(
                    self.db, run.tenant_id, run=self.workers.run, turns=self.db_turns
                )
        except Exception as exc:
            log.warning("run.compact_failed", error=type(exc).__name__)

    async def _analyze(self, run: repository.ClaimedRun) -> None:
        """Fresh planner statistics for ``events`` after a large load.

        Until autovacuum gets to it, a table that just received a large load (a new
        tenant's first import above all) has statistics that do not know those rows,
        and the raw-events queries' plans can be orders of magnitude off. Done before
        the run is reported finished, so a query right after it sees the new statistics.
        A failure only costs the statistics (logged), never the run.
        """
        async with self._analyze_lock, self.db_turns:
            try:
                async with asyncio.timeout(ANALYZE_TIMEOUT_S), self.db.session() as session:
                    for statement in _ANALYZE_EVENTS:
                        await session.execute(statement)
                    await session.commit()
            except Exception as exc:
                log.warning("run.analyze_failed", error=type(exc).__name__)

    def _check(self, active: ActiveRun) -> None:
        if active.lease_lost:
            raise LeaseLost()
        if active.cancel.is_set():
            raise RunCancelled()
