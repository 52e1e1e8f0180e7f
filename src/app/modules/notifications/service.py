"""The notifications module's public functions. Stateless: the caller's session is passed
in and only flushed; the caller's transaction decides whether the email exists."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.modules.notifications import repository
from app.modules.notifications.templates import Rendered, RunAlert, render_run_alert
from app.modules.notifications.tenancy import tenant_profile

log = structlog.get_logger("app.notifications")

EmailKind = Literal[
    "import_failed", "import_succeeded", "source_recovered", "weekly_digest", "test"
]


@dataclass(slots=True)
class _Links:
    """Absolute links in emails need the public URL; set by the module's lifespan hook."""

    base_url: str = ""


links = _Links()


def run_link(tenant_id: str, run_id: uuid.UUID) -> str:
    return f"{links.base_url}/api/v1/tenants/{tenant_id}/runs/{run_id}"


async def enqueue_email(
    session: AsyncSession,
    *,
    tenant_id: str,
    kind: EmailKind,
    event_key: str,
    recipients: Iterable[str],
    message: Rendered,
) -> int:
    """Queue ``message`` once per recipient in the caller's transaction (flush only).

    ``event_key`` identifies the event (a run id, a digest week); together with the kind
    and the recipient it forms the idempotency key, so the same event never produces a
    second email to the same person. Returns how many rows were newly queued.
    """
    queued = 0
    for recipient in dict.fromkeys(r.strip().lower() for r in recipients):
        if not recipient:
            continue
        created = await repository.enqueue(
            session,
            tenant_id=tenant_id,
            kind=kind,
            idempotency_key=f"{kind}:{event_key}:{recipient}",
            recipient=recipient,
            message=message,
        )
        queued += created
    return queued


async def notify_run_outcome(
    session: AsyncSession,
    *,
    tenant_id: str,
    run_id: uuid.UUID,
    source_id: uuid.UUID,
    source_name: str,
    status: Literal["succeeded", "failed"],
    attempts: int,
    error: str | None,
    finished_at: datetime,
) -> None:
    """Record a run's final outcome and queue the alerts it calls for (flush only).

    Call it in the transaction that records the outcome. It queues *import failed*
    (when that alert is on), *source recovered* (a success after one or more failures,
    when on) or *import succeeded* (off by default) to the tenant's recipients. Calling
    it twice for the same run queues nothing new.
    """
    if finished_at.tzinfo is None:
        finished_at = finished_at.replace(tzinfo=UTC)
    previous = await repository.record_source_outcome(
        session,
        tenant_id=tenant_id,
        source_id=source_id,
        run_id=run_id,
        status=status,
        finished_at=finished_at,
    )
    if previous is None:
        log.info("notifications.outcome_already_recorded", tenant_id=tenant_id, run_id=str(run_id))
        return
    preferences = await repository.get_preferences(session, tenant_id)
    if preferences is None or not preferences.recipients:
        return
    kind: EmailKind | None = None
    if status == "failed":
        kind = "import_failed" if preferences.import_failed else None
    elif previous.status == "failed" and preferences.source_recovered:
        kind = "source_recovered"
    elif preferences.import_succeeded:
        kind = "import_succeeded"
    if kind is None:
        return
    tenant = await tenant_profile(session, tenant_id)
    local = finished_at.astimezone(tenant.timezone)
    message = render_run_alert(
        RunAlert(
            kind=kind,
            tenant_name=tenant.name,
            source_name=source_name,
            status=status,
            attempts=attempts,
            error=error if status == "failed" else None,
            finished=f"{local:%Y-%m-%d %H:%M} {local.tzname() or tenant.timezone.key}",
            link=run_link(tenant_id, run_id),
            previous_failures=previous.consecutive_failures,
        )
    )
    queued = await enqueue_email(
        session,
        tenant_id=tenant_id,
        kind=kind,
        event_key=str(run_id),
        recipients=preferences.recipients,
        message=message,
    )
    log.info(
        "notifications.run_alert_queued",
        tenant_id=tenant_id,
        run_id=str(run_id),
        source_id=str(source_id),
        kind=kind,
        queued=queued,
    )
