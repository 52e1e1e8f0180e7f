"""notifications: preferences, outbox, per-source outcomes, digest slots

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tenant_id() -> sa.Column[str]:
    return sa.Column(
        "tenant_id",
        sa.String(63),
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
    )


def _now(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "notification_preferences",
        sa.Column(
            "tenant_id",
            sa.String(63),
            sa.ForeignKey("tenants.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "recipients",
            postgresql.ARRAY(sa.String(320)),
            server_default=sa.text("'{}'::varchar[]"),
            nullable=False,
        ),
        sa.Column("import_failed", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "import_succeeded", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("source_recovered", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("weekly_digest", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("digest_weekday", sa.SmallInteger(), server_default=sa.text("1"), nullable=False),
        sa.Column("digest_hour", sa.SmallInteger(), server_default=sa.text("8"), nullable=False),
        _now("updated_at"),
        sa.CheckConstraint("digest_weekday BETWEEN 1 AND 7", name="digest_weekday_range"),
        sa.CheckConstraint("digest_hour BETWEEN 0 AND 23", name="digest_hour_range"),
    )

    op.create_table(
        "notification_outbox",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        _tenant_id(),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(500), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _now("next_attempt_at"),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("message_id", sa.String(255), nullable=True),
        _now("created_at"),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        _now("updated_at"),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name="uq_notification_outbox_key"),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'failed')", name="status_known"
        ),
    )
    op.create_index(
        "ix_notification_outbox_due",
        "notification_outbox",
        ["next_attempt_at"],
        postgresql_where=sa.text("status IN ('pending', 'sending')"),
    )
    op.create_index(
        "ix_notification_outbox_tenant_created",
        "notification_outbox",
        ["tenant_id", "created_at"],
    )

    op.create_table(
        "notification_source_outcomes",
        _tenant_id(),
        sa.Column("source_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("last_status", sa.String(16), nullable=False),
        sa.Column(
            "consecutive_failures", sa.Integer(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("last_run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=False),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("tenant_id", "source_id"),
    )

    op.create_table(
        "notification_digests",
        _tenant_id(),
        sa.Column("week_start", sa.Date(), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        _now("created_at"),
        sa.PrimaryKeyConstraint("tenant_id", "week_start"),
    )


def downgrade() -> None:
    op.drop_table("notification_digests")
    op.drop_table("notification_source_outcomes")
    op.drop_index("ix_notification_outbox_tenant_created", table_name="notification_outbox")
    op.drop_index("ix_notification_outbox_due", table_name="notification_outbox")
    op.drop_table("notification_outbox")
    op.drop_table("notification_preferences")
