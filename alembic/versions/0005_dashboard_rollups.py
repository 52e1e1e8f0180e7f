"""dashboard_rollups: stats rollups (UTC hours, local days) with HLL sketches; session index

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
    # grain 0: one row per (tenant, UTC hour) for the all-events total (dim 0).
    # grain 1: one row per (tenant, local day in the tenant's timezone, dimension,
    # value); dim 0 is the total. bucket is the instant the hour or local day starts.
    # The primary key serves every dashboard read: tenant, grain, one dimension, a
    # bucket range. Sketches are Apache DataSketches HLL (lg_k=12, HLL_4), compact.
    op.execute(
        """
        CREATE TABLE stats_rollups (
            tenant_id text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            grain smallint NOT NULL,
            dim smallint NOT NULL,
            bucket timestamptz NOT NULL,
            value text NOT NULL,
            events bigint NOT NULL,
            pageviews bigint NOT NULL,
            new_users bigint NOT NULL,
            conversions bigint NOT NULL,
            engagement_msec bigint NOT NULL,
            revenue numeric(24,6) NOT NULL,
            users_count bigint NOT NULL,
            sessions_count bigint NOT NULL,
            users_hll bytea,
            sessions_hll bytea,
            engaged_hll bytea,
            converting_hll bytea,
            CONSTRAINT pk_stats_rollups PRIMARY KEY (tenant_id, grain, dim, bucket, value)
        )
        """
    )
    # A top-N breakdown fetches the winners' sketches by value over the range.
    op.execute(
        "CREATE INDEX ix_stats_rollups_value ON stats_rollups (tenant_id, grain, dim, value, bucket)"
    )
    op.execute(
        """
        CREATE TABLE stats_rollup_state (
            tenant_id text PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
            timezone text NOT NULL,
            conversion_events text[] NOT NULL,
            built_at timestamptz NOT NULL
        )
        """
    )
    # Session-level facts (engaged, converting) look up all events of a session.
    op.execute("CREATE INDEX ix_events_tenant_session ON events (tenant_id, user_id, session_id)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_events_tenant_session")
    op.execute("DROP TABLE stats_rollup_state")
    op.execute("DROP TABLE stats_rollups")
