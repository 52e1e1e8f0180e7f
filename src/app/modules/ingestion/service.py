"""The ingestion module's public functions: sources, runs, quarantine, source tests.

Stateless; the session is passed in and only flushed (the request commits).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import msgspec
import structlog
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.crypto import DecryptionFailed, SecretBox
from app.core.errors import Conflict, Invalid, NotFound
from app.core.logging import current_request_id
from app.core.outbound import STRICT, OutboundPolicy, OutboundRefused
from app.core.validation import explain
from app.modules.ingestion import schemas
from app.modules.ingestion.connectors import connector_kinds, get_connector
from app.modules.ingestion.connectors.base import Connector, SourceContext
from app.modules.ingestion.models import QuarantinedRow, Run, Source
from app.modules.ingestion.scheduler import validate_cron
from app.modules.ingestion.secrets import associated_data, open_secrets, seal, secret_fields
from app.modules.ingestion.timezones import zone
from app.modules.tenants import get_tenant_config

log = structlog.get_logger("app.ingestion")

MAX_WINDOW_DAYS = 366
# Product analytics before 2000 is not a thing; an earlier date is a typo (0001-01-01).
EARLIEST_DATE = date(2000, 1, 1)
FOREIGN_KEY_VIOLATION = "23503"


# --- sources -------------------------------------------------------------------
def _connector(kind: str) -> Connector:
    connector = get_connector(kind)
    if connector is None:
        raise Invalid(
            f"unknown source kind {kind!r}; known kinds: {', '.join(connector_kinds())}",
            field="kind",
        )
    return connector


def _typed(value: dict[str, Any], type_: type[msgspec.Struct], field: str) -> msgspec.Struct:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        message, path = explain(exc)
        where = f" at `{path}`" if path else ""
        raise Invalid(f"invalid {field}{where}: {message}", field=field) from None


def _check_outbound(config: msgspec.Struct, outbound: OutboundPolicy | None) -> None:
    """An endpoint override is honoured only for a host the operator allows
    (PULSE_OUTBOUND_ALLOW); SFTP hosts are checked when connecting, on the resolved
    address."""
    endpoint = getattr(config, "api_endpoint", None)
    if not endpoint:
        return
    try:
        (outbound or STRICT).check_endpoint(endpoint)
    except OutboundRefused as exc:
        raise Invalid(f"config.api_endpoint: {exc}", field="config.api_endpoint") from None


def _check_schedule(schedule: schemas.Schedule | None) -> None:
    if schedule is None:
        return
    if (schedule.cron is None) == (schedule.interval_s is None):
        raise Invalid("a schedule has either cron or interval_s", field="schedule")
    if schedule.cron is not None:
        problem = validate_cron(schedule.cron)
        if problem:
            raise Invalid(f"invalid cron expression: {problem}", field="schedule.cron")


def _to_schema(source: Source) -> schemas.Source:
    schedule = None
    if source.schedule_cron or source.schedule_interval_s:
        schedule = schemas.Schedule(
            cron=source.schedule_cron, interval_s=source.schedule_interval_s
        )
    last_run = None
    if source.last_run_id is not None:
        last_run = schemas.LastRun(
            id=source.last_run_id,
            status=source.last_run_status or "",
            at=source.last_run_at,
            summary=source.last_run_summary,
        )
    return schemas.Source(
        id=source.id,
        tenant_id=source.tenant_id,
        kind=source.kind,
        name=source.name,
        config=source.config,
        secret_fields=list(source.secret_fields or []),
        schedule=schedule,
        enabled=source.enabled,
        cursor=source.cursor,
        last_run=last_run,
        consecutive_failures=source.consecutive_failures,
        created_at=source.created_at,
        updated_at=source.updated_at,
    )


async def _get_source(session: AsyncSession, tenant_id: str, source_id: uuid.UUID) -> Source:
    source = (
        await session.execute(
            select(Source).where(Source.tenant_id == tenant_id, Source.id == source_id)
        )
    ).scalar_one_or_none()
    if source is None:
        raise NotFound(f"source {source_id} not found")
    return source


async def _flush_unique_name(session: AsyncSession, name: str, tenant_id: str) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:
        if "uq_ingestion_sources_tenant_name" in str(exc.orig):
            raise Conflict(f"a source named {name!r} already exists") from None
        # The only foreign key of a source is its tenant: no extra query to check it first.
        if getattr(exc.orig, "sqlstate", None) == FOREIGN_KEY_VIOLATION:
            raise NotFound(f"tenant {tenant_id!r} not found") from None
        raise


async def create_source(
    session: AsyncSession,
    box: SecretBox,
    tenant_id: str,
    data: schemas.SourceCreate,
    *,
    outbound: OutboundPolicy | None = None,
) -> schemas.Source:
    """Validate config and secrets for the kind, encrypt the secrets, store the source."""
    connector = _connector(data.kind)
    config = _typed(data.config, connector.config_type, "config")
    _check_outbound(config, outbound)
    secrets = _typed(data.secrets or {}, connector.secrets_type, "secrets")
    _check_schedule(data.schedule)
    source_id = uuid.uuid4()
    now = datetime.now(UTC)
    source = Source(
        id=source_id,
        tenant_id=tenant_id,
        kind=data.kind,
        name=data.name,
        config=msgspec.to_builtins(config),
        secrets_ciphertext=seal(box, tenant_id, source_id, secrets),
        secret_fields=secret_fields(secrets),
        schedule_cron=data.schedule.cron if data.schedule else None,
        schedule_interval_s=data.schedule.interval_s if data.schedule else None,
        enabled=data.enabled,
        cursor={},
        # The first slot is the first one after creation, not a catch-up of the past.
        last_scheduled_at=now,
        consecutive_failures=0,
        created_at=now,
        updated_at=now,
    )
    session.add(source)
    await _flush_unique_name(session, data.name, tenant_id)
    log.info("source.created", tenant_id=tenant_id, source_id=str(source_id), kind=data.kind)
    return _to_schema(source)


async def list_sources(session: AsyncSession, tenant_id: str) -> schemas.SourceList:
    rows = await session.execute(
        select(Source).where(Source.tenant_id == tenant_id).order_by(Source.created_at, Source.id)
    )
    return schemas.SourceList(items=[_to_schema(s) for s in rows.scalars()])


async def get_source(session: AsyncSession, tenant_id: str, source_id: uuid.UUID) -> schemas.Source:
    return _to_schema(await _get_source(session, tenant_id, source_id))


async def update_source(
    session: AsyncSession,
    box: SecretBox,
    tenant_id: str,
    source_id: uuid.UUID,
    data: schemas.SourceUpdate,
    *,
    outbound: OutboundPolicy | None = None,
) -> schemas.Source:
    """Change what is given; new secrets replace the old ones entirely."""
    source = await _get_source(session, tenant_id, source_id)
    connector = _connector(source.kind)
    if data.name is not msgspec.UNSET:
        source.name = data.name
    if data.config is not msgspec.UNSET:
        config = _typed(data.config, connector.config_type, "config")
        _check_outbound(config, outbound)
        source.config = msgspec.to_builtins(config)
    if data.secrets is not msgspec.UNSET:
        secrets = _typed(data.secrets or {}, connector.secrets_type, "secrets")
        source.secrets_ciphertext = seal(box, tenant_id, source_id, secrets)
        source.secret_fields = secret_fields(secrets)
    if data.schedule is not msgspec.UNSET:
        _check_schedule(data.schedule)
        source.schedule_cron = data.schedule.cron if data.schedule else None
        source.schedule_interval_s = data.schedule.interval_s if data.schedule else None
        source.last_scheduled_at = datetime.now(UTC)
    if data.enabled is not msgspec.UNSET:
        if data.enabled and not source.enabled:
            source.last_scheduled_at = datetime.now(UTC)  # no catch-up for the paused time
        source.enabled = data.enabled
    source.updated_at = datetime.now(UTC)
    await _flush_unique_name(session, source.name, tenant_id)
    return _to_schema(source)


async def delete_source(session: AsyncSession, tenant_id: str, source_id: uuid.UUID) -> None:
    """Delete the source with its runs and ledger; loaded events stay (they are data)."""
    result = await session.execute(
        delete(Source).where(Source.tenant_id == tenant_id, Source.id == source_id)
    )
    if not getattr(result, "rowcount", 0):
        raise NotFound(f"source {source_id} not found")
    log.info("source.deleted", tenant_id=tenant_id, source_id=str(source_id))


async def reencrypt_secrets(session: AsyncSession, box: SecretBox) -> int:
    """Re-encrypt every source's secrets under the primary key (the rotation step that lets
    an old key be removed from ``PULSE_SECRET_KEY``). Returns how many were rewritten."""
    rows = await session.execute(
        select(Source).where(Source.secrets_ciphertext.is_not(None)).with_for_update()
    )
    changed = 0
    for source in rows.scalars():
        token = source.secrets_ciphertext
        if token is not None and box.needs_reencryption(token):
            source.secrets_ciphertext = box.reencrypt(
                token, associated_data=associated_data(source.tenant_id, source.id)
            )
            changed += 1
    await session.flush()
    return changed


async def check_source(
    session: AsyncSession,
    box: SecretBox,
    tenant_id: str,
    source_id: uuid.UUID,
    *,
    timeout_s: float,
    http: httpx.AsyncClient | None = None,
    executor: ThreadPoolExecutor | None = None,
    outbound: OutboundPolicy | None = None,
) -> schemas.SourceTestResult:
    """Run the connector's connectivity check within ``timeout_s``; never raises for it."""
    source = await _get_source(session, tenant_id, source_id)
    kind, raw_config, ciphertext = source.kind, source.config, source.secrets_ciphertext
    tz_name = await _tenant_timezone(session, tenant_id)
    # Do not hold a pooled connection while talking to the outside world.
    await session.rollback()
    started = time.perf_counter()
    checks: list[schemas.SourceTestCheck] = []
    connector = _connector(kind)
    try:
        config = msgspec.convert(raw_config, connector.config_type)
        secrets = open_secrets(
            box,
            connector,
            tenant_id=tenant_id,
            source_id=source_id,
            ciphertext=ciphertext,
        )
        ctx = SourceContext(
            tenant_id=tenant_id,
            source_id=source_id,
            config=config,
            secrets=secrets,
            timezone=tz_name,
            http=http,
            executor=executor,
            outbound=outbound,
        )
        async with asyncio.timeout(timeout_s):
            result = await connector.test(ctx)
        ok = result.ok
        checks = [
            schemas.SourceTestCheck(name=c.name, ok=c.ok, detail=c.detail) for c in result.checks
        ]
    except TimeoutError:
        ok = False
        checks.append(
            schemas.SourceTestCheck(
                name="timeout", ok=False, detail=f"no answer within {timeout_s:g} s"
            )
        )
    except (msgspec.ValidationError, DecryptionFailed) as exc:
        ok = False
        checks.append(schemas.SourceTestCheck(name="configuration", ok=False, detail=str(exc)))
    except Exception as exc:
        ok = False
        log.warning(
            "source.test_failed",
            tenant_id=tenant_id,
            source_id=str(source_id),
            error_class=type(exc).__name__,
            error=str(exc)[:500],
        )
        # Not str(exc): an unclassified error may carry what the remote answered.
        checks.append(
            schemas.SourceTestCheck(
                name="connection",
                ok=False,
                detail=f"unexpected error ({type(exc).__name__}); the server log has details",
            )
        )
    return schemas.SourceTestResult(
        ok=ok, duration_ms=int((time.perf_counter() - started) * 1000), checks=checks
    )


async def _tenant_timezone(session: AsyncSession, tenant_id: str) -> str:
    return (await get_tenant_config(session, tenant_id)).timezone


# --- runs ----------------------------------------------------------------------
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
    run = (
        await session.execute(select(Run).where(Run.tenant_id == tenant_id, Run.id == run_id))
    ).scalar_one_or_none()
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
    offset: int = 0,
) -> schemas.RunPage:
    query = select(Run).where(Run.tenant_id == tenant_id)
    if source_id is not None:
        query = query.where(Run.source_id == source_id)
    if status is not None:
        query = query.where(Run.status == status)
    rows = await session.execute(
        query.order_by(Run.created_at.desc(), Run.id).limit(limit + 1).offset(offset)
    )
    runs = list(rows.scalars())
    more = len(runs) > limit
    return schemas.RunPage(
        items=[_run_schema(r) for r in runs[:limit]],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if more else None,
    )


async def cancel_run(session: AsyncSession, tenant_id: str, run_id: uuid.UUID) -> schemas.Run:
    """A queued run is cancelled at once; a running one stops at its next batch boundary."""
    run = (
        await session.execute(
            select(Run).where(Run.tenant_id == tenant_id, Run.id == run_id).with_for_update()
        )
    ).scalar_one_or_none()
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


async def list_quarantine(
    session: AsyncSession, tenant_id: str, run_id: uuid.UUID, *, limit: int = 100, offset: int = 0
) -> schemas.QuarantinePage:
    await _get_run(session, tenant_id, run_id)
    rows = await session.execute(
        select(QuarantinedRow)
        .where(QuarantinedRow.tenant_id == tenant_id, QuarantinedRow.run_id == run_id)
        .order_by(QuarantinedRow.id)
        .limit(limit + 1)
        .offset(offset)
    )
    items = list(rows.scalars())
    more = len(items) > limit
    return schemas.QuarantinePage(
        items=[
            schemas.QuarantinedRow(
                item=q.item,
                line_number=q.line_number,
                reason=q.reason,
                raw=q.raw,
                created_at=q.created_at,
            )
            for q in items[:limit]
        ],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if more else None,
    )
