"""The notifications module's public functions. The caller's session is passed in and only
flushed; the caller's transaction decides whether the email exists. No process state:
what an email needs from the settings (its links' public URL) is handed in."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Invalid
from app.core.pagination import parse_time_id_cursor, time_id_cursor
from app.modules.notifications import repository
from app.modules.notifications.links import EmailLinks
from app.modules.notifications.models import NotificationPreferences
from app.modules.notifications.schemas import (
    Alerts,
    DigestSchedule,
    NotificationSettings,
    NotificationSettingsUpdate,
    OutboxEntry,
    OutboxPage,
    TestEmailQueued,
)
from app.modules.notifications.templates import (
    Rendered,
    RunAlert,
    render_run_alert,
    render_test_email,
)
from app.modules.notifications.tenancy import TenantProfile, tenant_profile

log = structlog.get_logger("app.notifications")

EmailKind = Literal[
    "import_failed", "import_succeeded", "source_recovered", "weekly_digest", "test"
]


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
    links: EmailLinks,
    previous_failures: int,
) -> None:
    """Record a run's final outcome and queue the alerts it calls for (flush only).

    Call it in the transaction that records the outcome. It queues *import failed*
    (when that alert is on), *source recovered* (a success after ``previous_failures``
    failed runs in a row - ingestion keeps that streak and hands it over - when on) or
    *import succeeded* (off by default) to the tenant's recipients. Calling it twice for
    the same run queues nothing new.
    """
    if finished_at.tzinfo is None:
        finished_at = finished_at.replace(tzinfo=UTC)
    announced = await repository.record_source_outcome(
        session,
        tenant_id=tenant_id,
        source_id=source_id,
        run_id=run_id,
        finished_at=finished_at,
    )
    if not announced:
        log.info("notifications.outcome_already_recorded", tenant_id=tenant_id, run_id=str(run_id))
        return
    preferences = await repository.get_preferences(session, tenant_id)
    if preferences is None or not preferences.recipients:
        return
    kind: EmailKind | None = None
    if status == "failed":
        kind = "import_failed" if preferences.import_failed else None
    elif previous_failures > 0 and preferences.source_recovered:
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
            link=links.run(tenant_id, run_id),
            previous_failures=previous_failures,
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


# --- admin API ---------------------------------------------------------------------------


def _settings_view(
    tenant: TenantProfile, preferences: NotificationPreferences | None
) -> NotificationSettings:
    if preferences is None:
        return NotificationSettings(
            tenant_id=tenant.id,
            recipients=[],
            alerts=Alerts(),
            digest=DigestSchedule(),
            timezone=tenant.timezone.key,
            updated_at=None,
        )
    return NotificationSettings(
        tenant_id=tenant.id,
        recipients=list(preferences.recipients),
        alerts=Alerts(
            import_failed=preferences.import_failed,
            import_succeeded=preferences.import_succeeded,
            source_recovered=preferences.source_recovered,
        ),
        digest=DigestSchedule(
            enabled=preferences.weekly_digest,
            weekday=preferences.digest_weekday,
            hour=preferences.digest_hour,
        ),
        timezone=tenant.timezone.key,
        updated_at=preferences.updated_at,
    )


async def get_notification_settings(session: AsyncSession, tenant_id: str) -> NotificationSettings:
    """The tenant's recipients, alert switches and digest schedule (defaults if never set)."""
    tenant = await tenant_profile(session, tenant_id, required=True)
    return _settings_view(tenant, await repository.get_preferences(session, tenant_id))


async def update_notification_settings(
    session: AsyncSession, tenant_id: str, update: NotificationSettingsUpdate
) -> NotificationSettings:
    """Replace the tenant's notification settings. Addresses are stored lower-cased, once."""
    tenant = await tenant_profile(session, tenant_id, required=True)
    recipients = list(dict.fromkeys(address.strip().lower() for address in update.recipients))
    preferences = await repository.upsert_preferences(
        session,
        tenant_id,
        {
            "recipients": recipients,
            "import_failed": update.alerts.import_failed,
            "import_succeeded": update.alerts.import_succeeded,
            "source_recovered": update.alerts.source_recovered,
            "weekly_digest": update.digest.enabled,
            "digest_weekday": update.digest.weekday,
            "digest_hour": update.digest.hour,
        },
    )
    log.info("notifications.settings_updated", tenant_id=tenant_id, recipients=len(recipients))
    return _settings_view(tenant, preferences)


async def list_outbox(
    session: AsyncSession,
    tenant_id: str,
    *,
    limit: int = 50,
    status: str | None = None,
    cursor: str | None = None,
) -> OutboxPage:
    """The tenant's emails, newest first: status, attempts, last error - never bodies."""
    await tenant_profile(session, tenant_id, required=True)
    after = parse_time_id_cursor(cursor) if cursor else None
    rows = await repository.list_outbox(
        session, tenant_id, limit=limit + 1, status=status, after=after
    )
    page = rows[:limit]
    items = [
        OutboxEntry(
            id=row.id,
            kind=row.kind,
            recipient=row.recipient,
            subject=row.subject,
            status=row.status,
            attempts=row.attempts,
            last_error=row.last_error,
            created_at=row.created_at,
            next_attempt_at=row.next_attempt_at,
            sent_at=row.sent_at,
        )
        for row in page
    ]
    last = page[-1] if len(rows) > limit and page else None
    return OutboxPage(
        items=items, next_cursor=time_id_cursor(last.created_at, last.id) if last else None
    )


async def queue_test_email(
    session: AsyncSession, tenant_id: str, *, requested_by: str | None = None
) -> TestEmailQueued:
    """Queue a test email to every recipient of the tenant (Invalid when there are none)."""
    tenant = await tenant_profile(session, tenant_id, required=True)
    preferences = await repository.get_preferences(session, tenant_id)
    recipients = list(preferences.recipients) if preferences else []
    if not recipients:
        raise Invalid("no recipients are configured; PUT some first", field="recipients")
    message = render_test_email(tenant_name=tenant.name, requested_by=requested_by)
    queued = await enqueue_email(
        session,
        tenant_id=tenant_id,
        kind="test",
        event_key=str(uuid.uuid4()),
        recipients=recipients,
        message=message,
    )
    log.info("notifications.test_email_queued", tenant_id=tenant_id, queued=queued)
    return TestEmailQueued(queued=queued, recipients=recipients)
