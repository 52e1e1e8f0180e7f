"""The runner: claims queued runs under a lease and executes them, several at a time.

One runner per process. It polls (and can be woken) to reap expired leases, notice
cancel requests and claim runs with ``FOR UPDATE SKIP LOCKED`` up to its concurrency.
Each claimed run executes in its own task (``ingestion.execution``: load, heartbeat,
cancel, outcome); losing the lease stops the run without committing anything further.
At shutdown the runner stops claiming,
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
from concurrent.futures import ThreadPoolExecutor

import httpx
import structlog
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.crypto import SecretBox
from app.core.db import Database
from app.core.settings import Settings
from app.core.workers import WorkerPool
from app.modules.ingestion import repository
from app.modules.ingestion.connectors import load_builtin_connectors
from app.modules.ingestion.execution import (
    DB_STEP_TIMEOUT_S,
    ActiveRun,
    IngestMetrics,
    RunExecution,
    run_log_context,
)
from app.modules.ingestion.outcomes import record_outcome
from app.modules.ingestion.prepare import PRELOAD
from app.modules.notifications import EmailLinks

log = structlog.get_logger("app.ingestion.runner")

# A runner needs every built-in connector registered, with or without the app around it
# (the package no longer imports them itself: the worker processes must not).
load_builtin_connectors()


def create_worker_pool(settings: Settings) -> WorkerPool:
    """The import worker processes (``PULSE_INGEST_WORKERS``, 0: one per core)."""
    return WorkerPool(
        settings.ingest_workers or os.cpu_count() or 1,
        preload=PRELOAD,
        call_timeout_s=settings.ingest_worker_timeout_s,
    )


def database_slots(settings: Settings) -> int:
    """How many imports run heavy statements at once (``PULSE_INGEST_DB_SLOTS``, 0: half
    the CPU cores, at least one)."""
    return settings.ingest_db_slots or max(1, (os.cpu_count() or 1) // 2)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Runner(RunExecution):
    """The claim loop of this process; the steps of one run are :class:`RunExecution`'s."""

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
        self.links = EmailLinks.from_settings(settings)
        # Without a pool from the app's lifespan (tests, tools) the runner owns one.
        self.workers = workers or create_worker_pool(settings)
        self._owns_workers = workers is None
        # One ANALYZE at a time in this process (several imports finishing together).
        self._analyze_lock = asyncio.Lock()
        # The imports' heavy statements take turns in this many slots (EventLoad): eight
        # imports at full speed each keep a PostgreSQL backend busy, and on a machine with
        # few cores the dashboard's queries (and this process) wait for a CPU behind them.
        self.db_turns = asyncio.Semaphore(database_slots(settings))
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
                with structlog.contextvars.bound_contextvars(**run_log_context(run)):
                    await self._reap(session, run)
            await session.commit()
        return len(expired)

    async def _reap(self, session: AsyncSession, run: repository.ExpiredRun) -> None:
        if run.attempt >= run.max_attempts:
            await record_outcome(
                session,
                run.id,
                owner=None,
                status="failed",
                links=self.links,
                error_class="LeaseExpired",
                error_message="the worker stopped renewing its lease on the last attempt",
            )
        else:
            await repository.requeue_expired(session, run.id)
        log.warning("run.lease_expired", owner=run.lease_owner)

    async def _notice_cancels(self) -> None:
        ids = [i for i, a in self.active.items() if not a.cancel.is_set()]
        if not ids:
            return
        async with asyncio.timeout(DB_STEP_TIMEOUT_S), self.db.session(all_tenants=True) as session:
            for run_id in await repository.cancel_requested(session, ids):
                if run_id in self.active:
                    self.active[run_id].cancel.set()

    # --- one run -----------------------------------------------------------
