"""faults_outbox: the sender that holds an outbox row's lease (every state change checks it)

Revision ID: 0006f
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006f"
down_revision: str | Sequence[str] | None = "0006r"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("notification_outbox", sa.Column("lease_owner", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("notification_outbox", "lease_owner")
