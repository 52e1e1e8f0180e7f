"""The runner: claims queued runs under a lease and executes them, several at a time.

One runner per process. It polls (and can be woken) to reap expired leases, notice
cancel requests and claim runs with ``FOR UPDATE SKIP LOCKED`` up to its concurrency.
Each claimed run gets a heartbeat task renewing its lease; losing the lease stops the
run without committing anything further. At shutdown the runner stops claiming,
lets runs finish for the grace period, then cancels them and releases their leases
so they are queued again without spending an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from app.core.crypto import SecretBox
from app.core.db import Database
from app.core.outbound import policy_for
from app.core.settings import Settings
from app.core.workers import WorkerPool
from app.modules.events import compact_tenant_rollups
from app.modules.ingestion import repository
from app.modules.ingestion.connectors import get_connector, load_builtin_connectors
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
from app.modules.ingestion.outcomes import backoff_s, record_outcome
from app.modules.ingestion.prepare import PRELOAD
from app.modules.ingestion.secrets import open_secrets

log = structlog.get_logger("app.ingestion.runner")

# A runner needs every built-in connector registered, with or without the app around it
# (the package no longer imports them itself: the worker processes must not).
load_builtin_connectors()

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


def create_worker_pool(settings: Settings) -> WorkerPool:
    """The import worker processes (``PULSE_INGEST_WORKERS``, 0: one per core)."""
    return WorkerPool(settings.ingest_workers or os.cpu_count() or 1, preload=PRELOAD)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


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


class Runner:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        secret_box: SecretBox,
        *,
        owner: str | None = None,
        http: httpx.AsyncClient | None = None,
        executor: ThreadPoolExecutor | None = None,
        metrics: IngestMetrics | None = None,
        workers: WorkerPool | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.box = secret_box
        self.owner = owner or default_owner()
        self.http = http
        self.executor = executor
        self.metrics = metrics
        # Without a pool from the app's lifespan (tests, tools) the runner owns one.
        self.workers = workers or create_worker_pool(settings)
        self._owns_workers = workers is None
        # One ANALYZE at a time in this process (several imports finishing together).
        self._analyze_lock = asyncio.Lock()
        self.concurrency = settings.ingest_concurrency
        self.lease_s = settings.ingest_lease_s
        self.heartbeat_s = min(settings.ingest_heartbeat_s, settings.ingest_lease_s / 3)
        self.poll_s = settings.ingest_poll_interval_s
        self.active: dict[uuid.UUID, ActiveRun] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_reap = 0.0

    # --- control -----------------------------------------------------------
    def wake(self) -> None:
        """Look for work now (a run was queued in this process)."""
        self._wake.set()

    def request_cancel(self, run_id: uuid.UUID) -> bool:
        """Cancel a run executing here at once (the database flag covers other replicas)."""
        active = self.active.get(run_id)
        if active is None:
            return False
        active.cancel.set()
        return True

    async def run(self) -> None:
        """The claim loop; returns after :meth:`stop`."""
        if self._owns_workers:
            await self.workers.start()
        log.info("runner.started", owner=self.owner, concurrency=self.concurrency)
        while not self._stopping:
            try:
                await self._tick()
            except Exception:
                log.exception("runner.tick_failed", owner=self.owner)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            self._wake.clear()

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; give running runs ``grace_s`` to finish, then interrupt them."""
        self._stopping = True
        self._wake.set()
        tasks = [a.task for a in self.active.values() if a.task is not None]
        if tasks:
            log.info("runner.draining", owner=self.owner, runs=len(tasks), grace_s=grace_s)
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=DB_STEP_TIMEOUT_S + 5)
        if self._owns_workers:
            await self.workers.close()
        log.info("runner.stopped", owner=self.owner)

    # --- the loop ----------------------------------------------------------
    async def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_reap >= self.poll_s:
            self._last_reap = now
            await self.reap_expired()
        await self._notice_cancels()
        while not self._stopping and len(self.active) < self.concurrency:
            claimed = await self._claim()
            if claimed is None:
                return
            self._start(claimed)

    async def _claim(self) -> repository.ClaimedRun | None:
        for _ in range(3):
            try:
                async with (
                    asyncio.timeout(DB_STEP_TIMEOUT_S),
                    self.db.session(all_tenants=True) as session,
                ):
                    claimed = await repository.claim_next_run(
                        session, owner=self.owner, lease_s=self.lease_s
                    )
                    await session.commit()
                    return claimed
            except sa_exc.IntegrityError:
                # Another worker started a run of the same source at the same instant.
                continue
        return None

    def _start(self, claimed: repository.ClaimedRun) -> None:
        active = ActiveRun(claimed)
        self.active[claimed.id] = active
        active.task = asyncio.create_task(self._execute(active), name=f"ingest-run-{claimed.id}")
        active.task.add_done_callback(lambda _: self._finished(claimed.id))
        if self.metrics:
            self.metrics.active.inc()
        log.info(
            "run.claimed",
            run_id=str(claimed.id),
            tenant_id=claimed.tenant_id,
            source_id=str(claimed.source_id),
            attempt=claimed.attempt,
            owner=self.owner,
        )

    def _finished(self, run_id: uuid.UUID) -> None:
        self.active.pop(run_id, None)
        if self.metrics:
            self.metrics.active.dec()
        self._wake.set()

    async def reap_expired(self) -> int:
        """Re-queue runs whose worker stopped renewing its lease (or fail them if spent)."""
        async with asyncio.timeout(DB_STEP_TIMEOUT_S), self.db.session(all_tenants=True) as session:
            expired = await repository.lock_expired_runs(session)
            for run in expired:
                if run.attempt >= run.max_attempts:
                    await record_outcome(
                        session,
                        run.id,
                        owner=None,
                        status="failed",
                        error_class="LeaseExpired",
                        error_message="the worker stopped renewing its lease on the last attempt",
                    )
                else:
                    await repository.requeue_expired(session, run.id)
                log.warning("run.lease_expired", run_id=str(run.id), owner=run.lease_owner)
            await session.commit()
        return len(expired)

    async def _notice_cancels(self) -> None:
        ids = [i for i, a in self.active.items() if not a.cancel.is_set()]
        if not ids:
            return
        async with asyncio.timeout(DB_STEP_TIMEOUT_S), self.db.session(all_tenants=True) as session:
            for run_id in await repository.cancel_requested(session, ids):
                if run_id in self.active:
                    self.active[run_id].cancel.set()

    # --- one run -----------------------------------------------------------
    async def _execute(self, active: ActiveRun) -> None:
        run = active.run
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
            log.warning("run.lease_lost", run_id=str(run.id), owner=self.owner)
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
                await record_outcome(session, run.id, owner=self.owner, status=status, **error)
                await session.commit()
        except Exception:
            # The lease will expire and the reaper re-queues the run; loading is idempotent.
            log.exception("run.outcome_not_recorded", run_id=str(run.id), status=status)
            return
        if self.metrics:
            self.metrics.finished.labels(status).inc()

    async def _failed(self, run: repository.ClaimedRun, exc: BaseException) -> None:
        error_class, message = describe(exc)
        transient = is_transient(exc)
        log_method = log.warning if transient else log.error
        log_method(
            "run.error",
            run_id=str(run.id),
            tenant_id=run.tenant_id,
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
            log.exception("run.retry_not_recorded", run_id=str(run.id))
            return
        if self.metrics:
            self.metrics.finished.labels("retrying").inc()
        log.info("run.retry_scheduled", run_id=str(run.id), delay_s=round(delay, 2))

    async def _release(self, run: repository.ClaimedRun) -> None:
        try:
            async with (
                asyncio.timeout(DB_STEP_TIMEOUT_S),
                self.db.session(run.tenant_id) as session,
            ):
                await repository.release_run(session, run.id, owner=self.owner)
                await session.commit()
            log.info("run.released", run_id=str(run.id), owner=self.owner)
        except Exception:
            log.exception("run.release_failed", run_id=str(run.id))

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
                    state = await repository.heartbeat(
                        session,
                        run.id,
                        owner=self.owner,
                        lease_s=self.lease_s,
                        progress=active.progress,
                    )
                    await session.commit()
            except Exception as exc:
                log.warning("run.heartbeat_failed", run_id=str(run.id), error=type(exc).__name__)
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
        log.info("run.cancel_requested", run_id=str(active.run.id))
        _, pending = await asyncio.wait({load}, timeout=CANCEL_GRACE_S)
        if pending:
            load.cancel()  # not at a batch boundary in time: interrupt the step

    async def _load(self, active: ActiveRun) -> None:
        run = active.run
        async with asyncio.timeout(DB_STEP_TIMEOUT_S), self.db.session(run.tenant_id) as session:
            source = await repository.source_for_run(session, run.source_id)
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
            timezone=source.timezone,
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
                await compact_tenant_rollups(self.db, run.tenant_id, run=self.workers.run)
        except Exception as exc:
            log.warning("run.compact_failed", run_id=str(run.id), error=type(exc).__name__)

    async def _analyze(self, run: repository.ClaimedRun) -> None:
        """Fresh planner statistics for ``events`` after a large load.

        Until autovacuum gets to it, a table that just received a large load (a new
        tenant's first import above all) has statistics that do not know those rows,
        and the raw-events queries' plans can be orders of magnitude off. Done before
        the run is reported finished, so a query right after it sees the new statistics.
        A failure only costs the statistics (logged), never the run.
        """
        async with self._analyze_lock:
            try:
                async with asyncio.timeout(ANALYZE_TIMEOUT_S), self.db.session() as session:
                    for statement in _ANALYZE_EVENTS:
                        await session.execute(statement)
                    await session.commit()
            except Exception as exc:
                log.warning("run.analyze_failed", run_id=str(run.id), error=type(exc).__name__)

    def _check(self, active: ActiveRun) -> None:
        if active.lease_lost:
            raise LeaseLost()
        if active.cancel.is_set():
            raise RunCancelled()
