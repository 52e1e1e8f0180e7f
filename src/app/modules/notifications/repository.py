"""SQL for the notifications module. Every statement filters by tenant where it reads
tenant data; nothing here commits (the caller owns the transaction)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.logging import current_request_id
from app.modules.notifications.models import (
    DigestSlot,
    NotificationPreferences,
    OutboxEmail,
    SourceOutcome,
)
from app.modules.notifications.templates import Rendered

# --- preferences -------------------------------------------------------------------------


async def get_preferences(session: AsyncSession, tenant_id: str) -> NotificationPreferences | None:
    result = await session.execute(
        select(NotificationPreferences).where(NotificationPreferences.tenant_id == tenant_id)
    )
    return result.scalar_one_or_none()


async def upsert_preferences(
    session: AsyncSession, tenant_id: str, values: dict[str, Any]
) -> NotificationPreferences:
    statement = (
        insert(NotificationPreferences)
        .values(tenant_id=tenant_id, **values)
        .on_conflict_do_update(
            index_elements=[NotificationPreferences.tenant_id],
            set_={**values, "updated_at": func.now()},
        )
        .returning(NotificationPreferences)
        .execution_options(populate_existing=True)
    )
    result = await session.execute(statement)
    return result.scalar_one()


async def tenants_with_digest(session: AsyncSession) -> Sequence[NotificationPreferences]:
    """Preferences of every tenant that wants a digest and has someone to send it to."""
    result = await session.execute(
        select(NotificationPreferences).where(
            NotificationPreferences.weekly_digest.is_(True),
            func.cardinality(NotificationPreferences.recipients) > 0,
        )
    )
    return result.scalars().all()


# --- per-source outcomes ---------------------------------------------------------------


async def record_source_outcome(
    session: AsyncSession,
    *,
    tenant_id: str,
    source_id: uuid.UUID,
    run_id: uuid.UUID,
    finished_at: datetime,
) -> bool:
    """Store the run as the source's latest announced outcome; False when this run was
    already recorded (a repeated call) or a newer outcome is stored, so callers do not
    announce the same event twice."""
    row = await _lock_outcome(session, tenant_id, source_id)
    if row is None:
        inserted = await session.execute(
            insert(SourceOutcome)
            .values(
                tenant_id=tenant_id,
                source_id=source_id,
                last_run_id=run_id,
                last_finished_at=finished_at,
            )
            .on_conflict_do_nothing(
                index_elements=[SourceOutcome.tenant_id, SourceOutcome.source_id]
            )
            .returning(SourceOutcome.source_id)
        )
        if inserted.scalar_one_or_none() is not None:
            return True
        row = await _lock_outcome(session, tenant_id, source_id)
        assert row is not None  # a concurrent transaction inserted it first
    if row.last_run_id == run_id or row.last_finished_at > finished_at:
        return False
    row.last_run_id = run_id
    row.last_finished_at = finished_at
    await session.flush()
    return True


async def _lock_outcome(
    session: AsyncSession, tenant_id: str, source_id: uuid.UUID
) -> SourceOutcome | None:
    result = await session.execute(
        select(SourceOutcome)
        .where(SourceOutcome.tenant_id == tenant_id, SourceOutcome.source_id == source_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


# --- outbox ----------------------------------------------------------------------------------


async def enqueue(
    session: AsyncSession,
    *,
    tenant_id: str,
    kind: str,
    idempotency_key: str,
    recipient: str,
    message: Rendered,
) -> bool:
    """Insert one outbox row; False when the same key was already queued (no duplicate)."""
    result = await session.execute(
        insert(OutboxEmail)
        .values(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            kind=kind,
            idempotency_key=idempotency_key,
            recipient=recipient,
            subject=message.subject,
            body_text=message.text,
            body_html=message.html,
            request_id=current_request_id(),
        )
        .on_conflict_do_nothing(constraint="uq_notification_outbox_key")
        .returning(OutboxEmail.id)
    )
    return result.scalar_one_or_none() is not None


@dataclass(frozen=True, slots=True)
class ClaimedEmail:
    id: uuid.UUID
    tenant_id: str
    kind: str
    recipient: str
    subject: str
    body_text: str
    body_html: str
    attempts: int
    request_id: str | None


async def claim_due(
    session: AsyncSession, *, owner: str, limit: int, lease_s: float
) -> list[ClaimedEmail]:
    """Claim up to ``limit`` due emails for sender ``owner`` (``FOR UPDATE SKIP LOCKED``).

    Due means pending with its next attempt time passed, or ``sending`` whose lease
    expired (its sender died mid-flight). The claim counts an attempt and sets a lease
    held by ``owner``: from then on only ``owner`` can change the row (every ``mark_*``,
    ``release`` and ``renew_leases`` checks it).
    """
    now = func.now()
    due = (
        select(OutboxEmail.id)
        .where(
            or_(
                and_(OutboxEmail.status == "pending", OutboxEmail.next_attempt_at <= now),
                and_(OutboxEmail.status == "sending", OutboxEmail.lease_expires_at <= now),
            )
        )
        .order_by(OutboxEmail.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    result = await session.execute(
        update(OutboxEmail)
        .where(OutboxEmail.id.in_(due))
        .values(
            status="sending",
            attempts=OutboxEmail.attempts + 1,
            lease_expires_at=now + timedelta(seconds=lease_s),
            lease_owner=owner,
            updated_at=now,
        )
        .returning(
            OutboxEmail.id,
            OutboxEmail.tenant_id,
            OutboxEmail.kind,
            OutboxEmail.recipient,
            OutboxEmail.subject,
            OutboxEmail.body_text,
            OutboxEmail.body_html,
            OutboxEmail.attempts,
            OutboxEmail.next_attempt_at,
            OutboxEmail.request_id,
        )
    )
    rows = sorted(result.all(), key=lambda r: r.next_attempt_at)
    return [
        ClaimedEmail(
            id=r.id,
            tenant_id=r.tenant_id,
            kind=r.kind,
            recipient=r.recipient,
            subject=r.subject,
            body_text=r.body_text,
            body_html=r.body_html,
            attempts=r.attempts,
            request_id=r.request_id,
        )
        for r in rows
    ]


def _held_by(owner: str) -> Any:
    """Rows ``owner`` still holds: claimed by it and not taken over since."""
    return and_(OutboxEmail.status == "sending", OutboxEmail.lease_owner == owner)


async def mark_sent(
    session: AsyncSession, email_id: uuid.UUID, message_id: str, *, owner: str
) -> bool:
    """Record that the SMTP server accepted the email; False if ``owner`` lost the row."""
    result = await session.execute(
        update(OutboxEmail)
        .where(OutboxEmail.id == email_id, _held_by(owner))
        .values(
            status="sent",
            sent_at=func.now(),
            message_id=message_id,
            lease_expires_at=None,
            lease_owner=None,
            last_error=None,
            updated_at=func.now(),
        )
        .returning(OutboxEmail.id)
    )
    return result.scalar_one_or_none() is not None


async def mark_retry(
    session: AsyncSession, email_id: uuid.UUID, error: str, delay_s: float, *, owner: str
) -> None:
    await session.execute(
        update(OutboxEmail)
        .where(OutboxEmail.id == email_id, _held_by(owner))
        .values(
            status="pending",
            next_attempt_at=func.now() + timedelta(seconds=delay_s),
            lease_expires_at=None,
            lease_owner=None,
            last_error=error,
            updated_at=func.now(),
        )
    )


async def mark_failed(
    session: AsyncSession, email_id: uuid.UUID, error: str, *, owner: str
) -> None:
    await session.execute(
        update(OutboxEmail)
        .where(OutboxEmail.id == email_id, _held_by(owner))
        .values(
            status="failed",
            lease_expires_at=None,
            lease_owner=None,
            last_error=error,
            updated_at=func.now(),
        )
    )


async def renew_leases(
    session: AsyncSession, email_ids: Sequence[uuid.UUID], *, owner: str, lease_s: float
) -> set[uuid.UUID]:
    """Extend ``owner``'s lease on ``email_ids``; returns the ids it still holds."""
    if not email_ids:
        return set()
    result = await session.execute(
        update(OutboxEmail)
        .where(OutboxEmail.id.in_(email_ids), _held_by(owner))
        .values(lease_expires_at=func.now() + timedelta(seconds=lease_s))
        .returning(OutboxEmail.id)
    )
    return set(result.scalars().all())


async def list_outbox(
    session: AsyncSession,
    tenant_id: str,
    *,
    limit: int,
    status: str | None = None,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> Sequence[OutboxEmail]:
    """Newest first; ``after`` is the (created_at, id) of the last row of the previous page."""
    statement = select(OutboxEmail).where(OutboxEmail.tenant_id == tenant_id)
    if status is not None:
        statement = statement.where(OutboxEmail.status == status)
    if after is not None:
        statement = statement.where(tuple_(OutboxEmail.created_at, OutboxEmail.id) < after)
    statement = statement.order_by(OutboxEmail.created_at.desc(), OutboxEmail.id.desc()).limit(
        limit
    )
    return (await session.execute(statement)).scalars().all()


# --- digests ---------------------------------------------------------------------------------


async def claim_digest_slot(
    session: AsyncSession, *, tenant_id: str, week_start: date, scheduled_for: datetime
) -> bool:
    """Insert the (tenant, week) slot; True only for the one caller that created it."""
    result = await session.execute(
        insert(DigestSlot)
        .values(tenant_id=tenant_id, week_start=week_start, scheduled_for=scheduled_for)
        .on_conflict_do_nothing(index_elements=[DigestSlot.tenant_id, DigestSlot.week_start])
        .returning(DigestSlot.tenant_id)
    )
    return result.scalar_one_or_none() is not None


async def release(
    session: AsyncSession,
    email_ids: Sequence[uuid.UUID],
    error: str | None = None,
    *,
    owner: str,
) -> None:
    """Put claimed but untried emails back: the attempt did not happen. ``error`` (why they
    could not be tried, e.g. the server is down) is shown as their last error."""
    values: dict[str, Any] = {
        "status": "pending",
        "attempts": func.greatest(OutboxEmail.attempts - 1, 0),
        "lease_expires_at": None,
        "lease_owner": None,
        "updated_at": func.now(),
    }
    if error is not None:
        values["last_error"] = error
    await session.execute(
        update(OutboxEmail).where(OutboxEmail.id.in_(email_ids), _held_by(owner)).values(**values)
    )


async def recent_digest_slots(
    session: AsyncSession, *, since: datetime
) -> frozenset[tuple[str, date]]:
    """(tenant, week) of every digest scheduled after ``since``: lets a tick skip them."""
    result = await session.execute(
        select(DigestSlot.tenant_id, DigestSlot.week_start).where(DigestSlot.scheduled_for > since)
    )
    return frozenset((row.tenant_id, row.week_start) for row in result)


async def purge_finished(session: AsyncSession, *, older_than: datetime, limit: int) -> int:
    """Delete up to ``limit`` sent or failed emails created before ``older_than``."""
    doomed = (
        select(OutboxEmail.id)
        .where(OutboxEmail.status.in_(("sent", "failed")), OutboxEmail.created_at < older_than)
        .limit(limit)
        .scalar_subquery()
    )
    result = await session.execute(
        delete(OutboxEmail).where(OutboxEmail.id.in_(doomed)).returning(OutboxEmail.id)
    )
    return len(result.all())
