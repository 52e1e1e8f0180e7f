"""The notifications module's tables: preferences, the outbox, per-source outcomes, digests."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base

TENANT_FK = "tenants.id"


class NotificationPreferences(Base):
    """Who gets email for a tenant, which alerts are on and when the digest goes out."""

    __tablename__ = "notification_preferences"

    tenant_id: Mapped[str] = mapped_column(
        String(63), ForeignKey(TENANT_FK, ondelete="CASCADE"), primary_key=True
    )
    recipients: Mapped[list[str]] = mapped_column(
        ARRAY(String(320)), server_default=text("'{}'::varchar[]")
    )
    import_failed: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    import_succeeded: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    source_recovered: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    weekly_digest: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # ISO weekday: 1 = Monday ... 7 = Sunday; hour 0-23, both in the tenant's timezone.
    digest_weekday: Mapped[int] = mapped_column(SmallInteger, server_default=text("1"))
    digest_hour: Mapped[int] = mapped_column(SmallInteger, server_default=text("8"))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        CheckConstraint("digest_weekday BETWEEN 1 AND 7", name="digest_weekday_range"),
        CheckConstraint("digest_hour BETWEEN 0 AND 23", name="digest_hour_range"),
    )


class OutboxEmail(Base):
    """One email to one recipient, written in the transaction that caused it."""

    __tablename__ = "notification_outbox"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(63), ForeignKey(TENANT_FK, ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(500))
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text)
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The sender holding the lease; every state change of a claimed row checks it, so a
    # sender whose lease was taken over can no longer requeue or overwrite the row.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(255))
    # The request that queued it (if one did); the sender's lines for it carry it too.
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_notification_outbox_key"),
        CheckConstraint("status IN ('pending', 'sending', 'sent', 'failed')", name="status_known"),
        # The sender's claim query: only undelivered rows, in due order.
        Index(
            "ix_notification_outbox_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'sending')"),
        ),
        Index("ix_notification_outbox_tenant_created", "tenant_id", "created_at"),
    )


class SourceOutcome(Base):
    """The last final outcome announced per source, so a repeated or late report of an
    outcome queues nothing. The failure streak is ingestion's: it is handed over with
    each outcome (``notify_run_outcome(previous_failures=...)``)."""

    __tablename__ = "notification_source_outcomes"

    tenant_id: Mapped[str] = mapped_column(
        String(63), ForeignKey(TENANT_FK, ondelete="CASCADE"), primary_key=True
    )
    source_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    last_run_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    last_finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class DigestSlot(Base):
    """One row per tenant and week: the unique key that makes a digest happen once."""

    __tablename__ = "notification_digests"

    tenant_id: Mapped[str] = mapped_column(
        String(63), ForeignKey(TENANT_FK, ondelete="CASCADE"), primary_key=True
    )
    # Monday (tenant's local date) of the week the digest summarises.
    week_start: Mapped[date] = mapped_column(Date, primary_key=True)
    scheduled_for: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
