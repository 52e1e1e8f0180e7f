"""dashboard_rollups: hourly stats rollups with HLL sketches, and the session index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per (tenant, dimension, UTC hour, value); dimension 0 is the all-events
    # total. The primary key serves every dashboard read: tenant, one dimension, an
    # hour range. Sketches are Apache DataSketches HLL (lg_k=12, HLL_4) in compact form.
    op.execute(
        """
        CREATE TABLE stats_rollups (
            tenant_id text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            dim smallint NOT NULL,
            hour timestamptz NOT NULL,
            value text NOT NULL,
            events bigint NOT NULL,
            pageviews bigint NOT NULL,
            new_users bigint NOT NULL,
            conversions bigint NOT NULL,
            engagement_msec bigint NOT NULL,
            revenue numeric(24,6) NOT NULL,
            users_hll bytea,
            sessions_hll bytea,
            engaged_hll bytea,
            converting_hll bytea,
            CONSTRAINT pk_stats_rollups PRIMARY KEY (tenant_id, dim, hour, value)
        )
        """
    )
    # Session-level facts (engaged, converting) look up all events of a session.
    op.execute("CREATE INDEX ix_events_tenant_session ON events (tenant_id, user_id, session_id)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_events_tenant_session")
    op.execute("DROP TABLE stats_rollups")
