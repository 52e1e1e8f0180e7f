"""Sources: create, read, change, delete; their config and secrets checked per kind.

Stateless; the session is passed in and only flushed (the request commits).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.crypto import SecretBox
from app.core.errors import Conflict, Invalid, NotFound
from app.core.outbound import STRICT, OutboundPolicy, OutboundRefused
from app.core.validation import explain
from app.modules.ingestion import repository, schemas
from app.modules.ingestion.connectors import connector_kinds, get_connector
from app.modules.ingestion.connectors.base import Connector
from app.modules.ingestion.models import Source
from app.modules.ingestion.scheduler import validate_cron
from app.modules.ingestion.secrets import associated_data, seal, secret_fields
from app.modules.tenants import get_tenant_config

log = structlog.get_logger("app.ingestion")

FOREIGN_KEY_VIOLATION = "23503"


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
    source = await repository.find_source(session, tenant_id, source_id)
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
    rows = await repository.tenant_sources(session, tenant_id)
    return schemas.SourceList(items=[_to_schema(s) for s in rows])


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
    if not await repository.delete_source(session, tenant_id, source_id):
        raise NotFound(f"source {source_id} not found")
    log.info("source.deleted", tenant_id=tenant_id, source_id=str(source_id))


async def reencrypt_secrets(session: AsyncSession, box: SecretBox) -> int:
    """Re-encrypt every source's secrets under the primary key (the rotation step that lets
    an old key be removed from ``PULSE_SECRET_KEY``). Returns how many were rewritten."""
    changed = 0
    for source in await repository.sources_with_secrets_for_update(session):
        token = source.secrets_ciphertext
        if token is not None and box.needs_reencryption(token):
            source.secrets_ciphertext = box.reencrypt(
                token, associated_data=associated_data(source.tenant_id, source.id)
            )
            changed += 1
    await session.flush()
    return changed


async def _tenant_timezone(session: AsyncSession, tenant_id: str) -> str:
    return (await get_tenant_config(session, tenant_id)).timezone
