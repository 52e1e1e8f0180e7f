"""The ingestion module's SQL: the run lifecycle (``runs``), what a run reads and writes
of its source (``sources``), the scheduler's (``schedule``) and the API's lookups of
runs, sources and quarantined rows (``records``). Callers use this package
(``repository.claim_next_run(...)``); nothing here commits."""

from __future__ import annotations

from app.modules.ingestion.repository.records import (
    delete_source,
    find_run,
    find_source,
    quarantine_page,
    runs_page,
    sources_with_secrets_for_update,
    tenant_sources,
)
from app.modules.ingestion.repository.runs import (
    BatchCounts,
    ClaimedRun,
    ExpiredRun,
    FinishedRun,
    LeaseState,
    cancel_requested,
    claim_next_run,
    finish_run,
    lock_expired_runs,
    release_run,
    renew_lease,
    requeue_expired,
    retry_run,
)
from app.modules.ingestion.repository.schedule import (
    ScheduledSource,
    schedule_slot,
    scheduled_sources,
)
from app.modules.ingestion.repository.sources import (
    SourceForRun,
    SourceOutcome,
    imported_files,
    patch_cursor,
    quarantine,
    record_ledger,
    record_source_outcome,
    source_for_run,
)

__all__ = [
    "BatchCounts",
    "ClaimedRun",
    "ExpiredRun",
    "FinishedRun",
    "LeaseState",
    "ScheduledSource",
    "SourceForRun",
    "SourceOutcome",
    "cancel_requested",
    "claim_next_run",
    "delete_source",
    "find_run",
    "find_source",
    "finish_run",
    "imported_files",
    "lock_expired_runs",
    "patch_cursor",
    "quarantine",
    "quarantine_page",
    "record_ledger",
    "record_source_outcome",
    "release_run",
    "renew_lease",
    "requeue_expired",
    "retry_run",
    "runs_page",
    "schedule_slot",
    "scheduled_sources",
    "source_for_run",
    "sources_with_secrets_for_update",
    "tenant_sources",
]
