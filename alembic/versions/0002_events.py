"""events: the event store (events table, per-tenant data versions)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One plain table keyed by (tenant_id, event_id): the key makes loading idempotent
    # (INSERT ... ON CONFLICT DO NOTHING). Time partitioning would force occurred_at into
    # the primary key and break dedup across partitions, so the dashboard's range scans
    # are served by the (tenant_id, occurred_at) index and its own rollups instead.
    op.execute(
        """
        CREATE TABLE events (
            tenant_id text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            event_id text NOT NULL,
            event_name text NOT NULL,
            occurred_at timestamptz NOT NULL,
            user_id text,
            session_id text,
            page_path text,
            page_title text,
            referrer text,
            source text,
            medium text,
            campaign text,
            country text,
            city text,
            device_category text,
            os text,
            browser text,
            engagement_time_msec bigint,
            session_engaged boolean,
            revenue numeric(18,6),
            currency text,
            properties jsonb NOT NULL DEFAULT '{}',
            source_id uuid,
            loaded_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_events PRIMARY KEY (tenant_id, event_id)
        )
        """
    )
    op.execute("CREATE INDEX ix_events_tenant_occurred ON events (tenant_id, occurred_at)")
    op.execute(
        "CREATE INDEX ix_events_tenant_name_occurred ON events (tenant_id, event_name, occurred_at)"
    )
    op.execute(
        """
        CREATE TABLE tenant_data_versions (
            tenant_id text PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
            version bigint NOT NULL DEFAULT 0,
            fresh_until timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE tenant_data_versions")
    op.execute("DROP TABLE events")
