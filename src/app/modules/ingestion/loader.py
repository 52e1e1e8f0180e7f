"""Turning a connector's batches into committed events, one transaction per commit point.

A :class:`BatchLoader` validates rows (bad ones go to quarantine with their line
and reason), loads the good ones through the event store, and on a batch with
``commit=True`` writes the run's counts (fenced by the lease), the source's cursor
patch and file-ledger entries into the same transaction before committing it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.cpu import background_slice
from app.core.db import Database
from app.modules.events import CanonicalEvent, EventLoad, RowRejected, to_canonical
from app.modules.ingestion import repository
from app.modules.ingestion.connectors.base import Batch, LedgerEntry, Progress
from app.modules.ingestion.repository import BatchCounts

RAW_LIMIT = 4000
_LOAD_STATEMENT_TIMEOUT = text("SET LOCAL statement_timeout = '600s'")
VALIDATION_SLICE = 200


class LeaseLost(Exception):
    """Another worker owns this run now; whatever this one had not committed is dropped."""


@dataclass
class Rejected:
    line_number: int | None
    reason: str
    raw: str | None


def _raw(row: Any) -> str:
    try:
        text = msgspec.json.encode(row, enc_hook=str).decode()
    except (TypeError, msgspec.EncodeError):
        text = repr(row)
    return text[:RAW_LIMIT]


def validate_rows(
    batch: Batch, start: int = 0, stop: int | None = None
) -> tuple[list[CanonicalEvent], list[Rejected]]:
    """Split ``batch.rows[start:stop]`` into events and rejects (pure CPU)."""
    events: list[CanonicalEvent] = []
    rejected: list[Rejected] = []
    numbers: Sequence[int] | None = batch.line_numbers
    rows = batch.rows
    for i in range(start, len(rows) if stop is None else min(stop, len(rows))):
        row = rows[i]
        try:
            events.append(to_canonical(row))
        except RowRejected as exc:
            if numbers is not None:
                line: int | None = numbers[i]
            elif batch.first_line is not None:
                line = batch.first_line + i
            else:
                line = None
            rejected.append(Rejected(line, exc.reason, _raw(row)))
    return events, rejected


async def validate_batch(batch: Batch) -> tuple[list[CanonicalEvent], list[Rejected]]:
    """Validate on the loop in short slices, yielding between them.

    A worker thread would not help: validation holds the GIL, and a loop thread that
    must win the GIL back after every socket call waits a switch interval each time.
    Slices of a few milliseconds, taking turns with other imports' slices
    (:func:`app.core.cpu.background_slice`), keep the loop's delay at about one slice.
    """
    events: list[CanonicalEvent] = []
    rejected = [Rejected(r.line_number, r.reason, r.raw) for r in batch.rejects]
    for start in range(0, len(batch.rows), VALIDATION_SLICE):
        async with background_slice():
            good, bad = validate_rows(batch, start, start + VALIDATION_SLICE)
        events.extend(good)
        rejected.extend(bad)
    return events, rejected


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
        self._pending: _Pending | None = None
        self.committed = BatchCounts()
        self.cancel_requested = False

    async def add(self, batch: Batch) -> None:
        if batch.abandon:
            await self.discard()
        self._progress.report(
            stage="loading",
            item=batch.item,
            rows_read=len(batch.rows) + len(batch.rejects),
            bytes_read=batch.bytes_read,
        )
        events, rejected = await validate_batch(batch)
        if self._pending is None:
            session = self._db.new_session(self._tenant_id)
            # A load may wait its turn behind other loads of the tenant (see EventLoad)
            # and rebuild rollups: longer than a request's statement timeout allows.
            await session.execute(_LOAD_STATEMENT_TIMEOUT)
            load = EventLoad(session, self._tenant_id, source_id=self._source_id)
            self._pending = _Pending(session, load)
        pending = self._pending
        for start in range(0, len(events), self._batch_rows):
            chunk = events[start : start + self._batch_rows]
            result = await pending.load.add(chunk)
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
            state = await repository.record_batch(
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

    @property
    def has_pending(self) -> bool:
        return self._pending is not None


def counts_dict(counts: BatchCounts) -> Mapping[str, int]:
    return {
        "rows_loaded": counts.loaded,
        "rows_duplicate": counts.duplicates,
        "rows_rejected": counts.rejected,
    }
