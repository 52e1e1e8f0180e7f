"""Recording a run's final outcome: run row, the source's last-run summary, the alert.

All three happen in the caller's transaction, so an email about a failed run exists
exactly when the failure is committed (the notifications outbox sends it later).
"""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.ingestion import repository
from app.modules.notifications import EmailLinks, notify_run_outcome

log = structlog.get_logger("app.ingestion")


async def record_outcome(
    session: AsyncSession,
    run_id: uuid.UUID,
    *,
    owner: str | None,
    status: str,
    links: EmailLinks,
    error_class: str | None = None,
    error_message: str | None = None,
) -> repository.FinishedRun | None:
    """Finish the run (fenced by ``owner`` when given) and report it; flush only."""
    finished = await repository.finish_run(
        session,
        run_id,
        owner=owner,
        status=status,
        error_class=error_class,
        error_message=error_message,
    )
    if finished is None:
        return None
    source = await repository.record_source_outcome(session, finished.source_id, run_id, finished)
    if status in ("succeeded", "failed"):
        await notify_run_outcome(
            session,
            tenant_id=finished.tenant_id,
            run_id=run_id,
            source_id=finished.source_id,
            source_name=source.name,
            status="succeeded" if status == "succeeded" else "failed",
            attempts=finished.attempt,
            error=None if error_message is None else f"{error_class}: {error_message}",
            finished_at=finished.finished_at,
            links=links,
            previous_failures=source.previous_failures,
        )
    log.info(
        "run.finished",
        run_id=str(run_id),
        tenant_id=finished.tenant_id,
        source_id=str(finished.source_id),
        status=status,
        attempts=finished.attempt,
        rows_loaded=finished.rows_loaded,
        error_class=error_class,
    )
    return finished
