"""anatomy: request ids on runs and emails; a source's failure streak kept once

A run queued by a request (``POST .../runs``) and an email queued by one record the
request's id, so the run's and the email's log lines carry it. The failure streak
is ingestion's (``ingestion_sources.consecutive_failures``); notifications kept a copy
with the last status, now they get it from ingestion when an outcome is reported.

Revision ID: 0007a
Revises: 0006i
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007a"
down_revision: str | Sequence[str] | None = "0006i"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ingestion_runs", sa.Column("request_id", sa.String(128), nullable=True))
    op.add_column("notification_outbox", sa.Column("request_id", sa.String(128), nullable=True))
    op.drop_column("notification_source_outcomes", "consecutive_failures")
    op.drop_column("notification_source_outcomes", "last_status")


def downgrade() -> None:
    op.add_column(
        "notification_source_outcomes",
        sa.Column("last_status", sa.String(16), nullable=False, server_default="succeeded"),
    )
    op.alter_column("notification_source_outcomes", "last_status", server_default=None)
    op.add_column(
        "notification_source_outcomes",
        sa.Column("consecutive_failures", sa.Integer(), server_default=sa.text("0")),
    )
    op.drop_column("notification_outbox", "request_id")
    op.drop_column("ingestion_runs", "request_id")
