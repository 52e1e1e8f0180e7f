"""imports_rollups: per-session facts, so rollups are updated per row loaded

Revision ID: 0006i
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006i"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per (tenant, user, session) with the additive facts that decide whether
    # the session is engaged. A load adds its rows' facts; a session whose ``engaged``
    # flips to true has its older events' groups updated (a session never becomes
    # un-engaged as events are added). Rebuilt with the rollups when conversion
    # events change. Rollups built before this table existed are rebuilt by the first
    # load (no stats_rollup_state row with sessions_built).
    op.execute(
        """
        CREATE TABLE stats_sessions (
            tenant_id text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            user_id text NOT NULL,
            session_id text NOT NULL,
            flagged boolean NOT NULL,
            engagement_msec bigint NOT NULL,
            pageviews bigint NOT NULL,
            converted boolean NOT NULL,
            engaged boolean NOT NULL,
            PRIMARY KEY (tenant_id, user_id, session_id)
        )
        """
    )
    op.execute(
        "ALTER TABLE stats_rollup_state ADD COLUMN sessions_built boolean NOT NULL DEFAULT false"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE stats_rollup_state DROP COLUMN IF EXISTS sessions_built")
    op.execute("DROP TABLE IF EXISTS stats_sessions")
