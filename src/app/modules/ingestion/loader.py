"""Turning a connector's batches into committed events, one transaction per commit point.

A :class:`BatchLoader` has rows validated in the worker processes (bad ones go to
quarantine with their line and reason; a connector may hand over rows prepared in the
workers already), loads the good ones through the event store, and on a batch with
``commit=True`` writes the run's counts (fenced by the lease), the source's cursor
patch and file-ledger entries into the same transaction before committing it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import Database
from app.core.workers import WorkerPool
from app.modules.events import EventLoad
from app.modules.ingestion import repository
from app.modules.ingestion.connectors.base import Batch, LedgerEntry, Progress
from app.modules.ingestion.prepare import Prepared, prepare_rows
from app.modules.ingestion.repository import BatchCounts

LOAD_STATEMENT_TIMEOUT_S = 600
_LOAD_STATEMENT_TIMEOUT = text(f"SET LOCAL statement_timeout = '{LOAD_STATEMENT_TIMEOUT_S}s'")
# Connector rows go to the workers in slices of this many (pickling a slice is short).
PREPARE_ROWS = 2000
WAITING_STAGE = "waiting for another import of this tenant"


class LeaseLost(Exception):
    """Another worker owns this run now; whatever this one had not committed is dropped."""


@dataclass
class Rejected:
    line_number: int | None
    reason: str
    raw: str | None


async def prepare_batch(
    workers: WorkerPool, tenant_id: str, source_id: str, batch: Batch
) -> Prepared:
    """Validate a connector's rows in the worker processes, in slices side by side."""
    rows = list(batch.rows)
    numbers = list(batch.line_numbers) if batch.line_numbers is not None else None
    parts = await asyncio.gather(
        *(
            workers.run(
                prepare_rows,
                tenant_id,
                source_id,
                rows[start : start + PREPARE_ROWS],
                None if numbers is None else numbers[start : start + PREPARE_ROWS],
                None if batch.first_line is None else batch.first_line + start,
            )
            for start in range(0, len(rows), PREPARE_ROWS)
        )
    )
    return Prepared(
        b"".join(p.copy for p in parts),
        sum(p.rows for p in parts),
        [r for p in parts for r in p.rejects],
        parts[0].pid if parts else 0,
    )


@dataclass
class _Pending:
    session: AsyncSession
    load: EventLoad
    counts: BatchCounts = field(default_factory=BatchCounts)
    cursor: dict[str, Any] = field(default_factory=dict)
    ledger: list[tuple[LedgerEntry, int]] = field(default_factory=list)
    item_loaded: int = 0


class BatchLoader:
    def __init__(
        self,
        db: Database,
        *,
        run_id: uuid.UUID,
        tenant_id: str,
        source_id: uuid.UUID,
        owner: str,
        lease_s: float,
        batch_rows: int,
        quarantine_cap: int,
        already_quarantined: int,
        progress: Progress,
        workers: WorkerPool,
        lock_wait_s: float,
        work_mem_mb: int | None = None,
        db_turns: asyncio.Semaphore | None = None,
        concurrency: int = 1,
    ) -> None:
        self._db = db
        self._run_id = run_id
        self._tenant_id = tenant_id
        self._source_id = source_id
        self._owner = owner
        self._lease_s = lease_s
        self._batch_rows = batch_rows
        self._cap = quarantine_cap
        self._quarantined = already_quarantined
        self._progress = progress
        self._workers = workers
        self._lock_wait_s = lock_wait_s
        self._work_mem_mb = work_mem_mb
        self._db_turns = db_turns
        # Between statements the transaction may wait for a database slot behind a step
        # of every other running import (a COPY, a merge, a rollup update: seconds, a
        # large first import's rollup rebuild minutes). The connection's idle limit
        # (600 s) could end it while it waits; the load's own limit is the statement
        # timeout once per import that may run beside it.
        self._idle_limit = text(
            "SET LOCAL idle_in_transaction_session_timeout ="
            f" '{LOAD_STATEMENT_TIMEOUT_S * max(1, concurrency)}s'"
        )
        self._pending: _Pending | None = None
        self.committed = BatchCounts()
        self.cancel_requested = False

    async def add(self, batch: Batch) -> None:
        if batch.abandon:
            await self.discard()
        prepared = batch.prepared
        if prepared is None and batch.rows:
            prepared = await prepare_batch(
                self._workers, self._tenant_id, str(self._source_id), batch
            )
        rejected = [Rejected(r.line_number, r.reason, r.raw) for r in batch.rejects]
        if prepared is not None:
            rejected.extend(Rejected(r.line_number, r.reason, r.raw) for r in prepared.rejects)
        self._progress.report(
            stage="loading",
            item=batch.item,
            rows_read=(prepared.rows if prepared is not None else 0) + len(rejected),
            bytes_read=batch.bytes_read,
        )
        if self._pending is None:
            session = self._db.new_session(self._tenant_id)
            # A load may wait its turn behind other loads of the tenant (see EventLoad)
            # and rebuild rollups: longer than a request's statement timeout allows.
            await session.execute(_LOAD_STATEMENT_TIMEOUT)
            await session.execute(self._idle_limit)
            load = EventLoad(
                session,
                self._tenant_id,
                source_id=self._source_id,
                lock_wait_s=self._lock_wait_s,
                on_lock_wait=lambda: self._progress.report(stage=WAITING_STAGE),
                workers=self._workers,
                work_mem_mb=self._work_mem_mb,
                turns=self._db_turns,
            )
            self._pending = _Pending(session, load)
        pending = self._pending
        if prepared is not None and prepared.rows:
            result = await pending.load.add_copy(prepared.copy, prepared.rows)
            pending.counts.loaded += result.inserted
            pending.counts.duplicates += result.duplicates
            pending.item_loaded += result.inserted
        await self._quarantine(pending, batch.item, rejected)
        if batch.cursor:
            pending.cursor.update(batch.cursor)
        if batch.ledger is not None:
            pending.ledger.append((batch.ledger, pending.item_loaded))
            pending.item_loaded = 0
        if batch.commit:
            await self.commit()

    async def _quarantine(
        self, pending: _Pending, item: str | None, rejected: list[Rejected]
    ) -> None:
        pending.counts.rejected += len(rejected)
        room = max(0, self._cap - self._quarantined - pending.counts.quarantined)
        kept = rejected[:room]
        pending.counts.quarantined += len(kept)
        await repository.quarantine(
            pending.session,
            [
                {
                    "tenant_id": self._tenant_id,
                    "run_id": self._run_id,
                    "source_id": self._source_id,
                    "item": item,
                    "line_number": r.line_number,
                    "reason": r.reason[:1000],
                    "raw": r.raw,
                }
                for r in kept
            ],
        )

    async def commit(self) -> None:
        """Commit the open transaction with its bookkeeping, if the lease is still ours."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            session = pending.session
            # The rollups of everything this transaction loaded, in one pass.
            self._progress.report(stage="updating rollups")
            await pending.load.finish()
            if pending.cursor:
                await repository.patch_cursor(session, self._source_id, pending.cursor)
            for entry, rows in pending.ledger:
                await repository.record_ledger(
                    session,
                    tenant_id=self._tenant_id,
                    source_id=self._source_id,
                    run_id=self._run_id,
                    entry=entry,
                    rows_loaded=rows,
                )
            # Last, so the run row stays locked only for the commit itself.
            state = await repository.renew_lease(
                session,
                self._run_id,
                owner=self._owner,
                lease_s=self._lease_s,
                counts=pending.counts,
                progress=self._progress,
            )
            if not state.held:
                await session.rollback()
                raise LeaseLost()
            await session.commit()
        finally:
            await pending.session.close()
        self.committed.add(pending.counts)
        self._quarantined += pending.counts.quarantined
        self.cancel_requested = self.cancel_requested or state.cancel_requested

    async def discard(self) -> None:
        """Roll back whatever is not committed (cancel, failure, shutdown)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending.session.close()
