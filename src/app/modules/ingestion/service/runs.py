"""Runs: queue a manual run or a backfill, read, list and cancel them.

The runner (``ingestion.runner``) executes them; this only writes the queue.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict, Invalid, NotFound
from app.core.logging import current_request_id
from app.core.pagination import parse_time_id_cursor, time_id_cursor
from app.modules.ingestion import repository, schemas
from app.modules.ingestion.connectors.base import Connector
from app.modules.ingestion.models import Run, Source
from app.modules.ingestion.service.sources import _connector, _get_source, _tenant_timezone, _typed
from app.modules.ingestion.timezones import zone

log = structlog.get_logger("app.ingestion")

MAX_WINDOW_DAYS = 366
# Product analytics before 2000 is not a thing; an earlier date is a typo (0001-01-01).
EARLIEST_DATE = date(2000, 1, 1)


def _run_schema(run: Run) -> schemas.Run:
    error = None
    if run.error_class or run.error_message:
        error = schemas.RunError(error_class=run.error_class, message=run.error_message)
    return schemas.Run(
        id=run.id,
        tenant_id=run.tenant_id,
        source_id=run.source_id,
        trigger=run.trigger,
        status=run.status,
        window_start=run.window_start,
        window_end=run.window_end,
        files=run.files,
        scheduled_for=run.scheduled_for,
        attempt=run.attempt,
        max_attempts=run.max_attempts,
        next_attempt_at=run.next_attempt_at if run.status == "queued" else None,
        lease_owner=run.lease_owner,
        lease_expires_at=run.lease_expires_at,
        heartbeat_at=run.heartbeat_at,
        cancel_requested_at=run.cancel_requested_at,
        progress=schemas.RunProgress(
            stage=run.stage,
            current_item=run.current_item,
            rows_read=run.rows_read,
            rows_loaded=run.rows_loaded,
            rows_duplicate=run.rows_duplicate,
            rows_rejected=run.rows_rejected,
            rows_quarantined=run.rows_quarantined,
            bytes_read=run.bytes_read,
        ),
        error=error,
        request_id=run.request_id,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        updated_at=run.updated_at,
    )


def _check_window(start: date | None, end: date | None, trigger: str) -> None:
    if (start is None) != (end is None):
        raise Invalid("give both start and end, or neither", field="start")
    if trigger == "backfill" and start is None:
        raise Invalid("a backfill needs start and end dates", field="start")
    if start is not None and end is not None:
        if start < EARLIEST_DATE:
            raise Invalid(f"start is before {EARLIEST_DATE.isoformat()}", field="start")
        if end < start:
            raise Invalid("end is before start", field="end")
        if (end - start).days + 1 > MAX_WINDOW_DAYS:
            raise Invalid(f"a window covers at most {MAX_WINDOW_DAYS} days", field="end")
        if end > datetime.now(UTC).date() + timedelta(days=1):
            raise Invalid("end is in the future", field="end")


def _check_fields_apply(source: Source, connector: Connector, data: schemas.RunCreate) -> None:
    """``files`` picks files of a file-set source (sftp); ``start``/``end`` a date window of
    the other kinds. A field that does not apply to the source's kind is a 400, not ignored."""
    if data.files is None and data.start is None:
        return
    try:
        config = msgspec.convert(source.config, connector.config_type)
    except msgspec.ValidationError:
        return  # a stored config that no longer validates: the run fails on it, terminally
    covers_dates = connector.default_window(config, datetime.now(UTC).date()) is not None
    if data.files is not None and covers_dates:
        raise Invalid(
            f"files applies only to file sources (sftp), not to a {source.kind} source",
            field="files",
        )
    if data.start is not None and not covers_dates:
        raise Invalid(
            f"a {source.kind} source imports the files it has not imported yet: start and "
            "end do not apply (pick files with files)",
            field="start",
        )


async def create_run(
    session: AsyncSession,
    tenant_id: str,
    source_id: uuid.UUID,
    data: schemas.RunCreate,
    *,
    max_attempts: int,
) -> schemas.Run:
    """Queue a manual run or a backfill; the runner picks it up (202 semantics)."""
    source = await _get_source(session, tenant_id, source_id)
    _check_window(data.start, data.end, data.trigger)
    start, end = data.start, data.end
    connector = _connector(source.kind)
    _check_fields_apply(source, connector, data)
    if start is None and not data.files:
        tz = await zone(await _tenant_timezone(session, tenant_id))
        config = _typed(source.config, connector.config_type, "config")
        window = connector.default_window(config, datetime.now(tz).date())
        if window is not None:
            start, end = window.start, window.end
    now = datetime.now(UTC)
    run = Run(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        source_id=source_id,
        trigger=data.trigger,
        request_id=current_request_id(),
        window_start=start,
        window_end=end,
        files=data.files,
        status="queued",
        attempt=0,
        max_attempts=max_attempts,
        next_attempt_at=now,
        rows_read=0,
        rows_loaded=0,
        rows_duplicate=0,
        rows_rejected=0,
        rows_quarantined=0,
        bytes_read=0,
        created_at=now,
        updated_at=now,
    )
    session.add(run)
    await session.flush()
    log.info("run.queued", tenant_id=tenant_id, run_id=str(run.id), trigger=data.trigger)
    return _run_schema(run)


async def _get_run(session: AsyncSession, tenant_id: str, run_id: uuid.UUID) -> Run:
    run = await repository.find_run(session, tenant_id, run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


async def get_run(session: AsyncSession, tenant_id: str, run_id: uuid.UUID) -> schemas.Run:
    return _run_schema(await _get_run(session, tenant_id, run_id))


async def list_runs(
    session: AsyncSession,
    tenant_id: str,
    *,
    source_id: uuid.UUID | None = None,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> schemas.RunPage:
    """The tenant's runs, newest first, ``limit`` at a time (``core.pagination``)."""
    runs = await repository.runs_page(
        session,
        tenant_id,
        source_id=source_id,
        status=status,
        before=parse_time_id_cursor(cursor) if cursor is not None else None,
        limit=limit + 1,
    )
    page = runs[:limit]
    last = page[-1] if len(runs) > limit and page else None
    return schemas.RunPage(
        items=[_run_schema(r) for r in page],
        next_cursor=time_id_cursor(last.created_at, last.id) if last else None,
    )


async def cancel_run(session: AsyncSession, tenant_id: str, run_id: uuid.UUID) -> schemas.Run:
    """A queued run is cancelled at once; a running one stops at its next batch boundary."""
    run = await repository.find_run(session, tenant_id, run_id, for_update=True)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if run.status not in ("queued", "running"):
        raise Conflict(f"run {run_id} already finished ({run.status})")
    now = datetime.now(UTC)
    run.cancel_requested_at = run.cancel_requested_at or now
    if run.status == "queued":
        run.status = "cancelled"
        run.stage = "cancelled"
        run.finished_at = now
    run.updated_at = now
    await session.flush()
    log.info("run.cancel_requested", tenant_id=tenant_id, run_id=str(run_id), status=run.status)
    return _run_schema(run)
