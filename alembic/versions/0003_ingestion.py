"""ingestion: sources, runs, quarantined rows, file ledger

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE ingestion_sources (
            id uuid PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            kind text NOT NULL,
            name text NOT NULL,
            config jsonb NOT NULL DEFAULT '{}',
            secrets_ciphertext text,
            secret_fields text[] NOT NULL DEFAULT '{}',
            schedule_cron text,
            schedule_interval_s integer CHECK (schedule_interval_s >= 1),
            enabled boolean NOT NULL DEFAULT true,
            "cursor" jsonb NOT NULL DEFAULT '{}',
            last_scheduled_at timestamptz,
            last_run_id uuid,
            last_run_status text,
            last_run_at timestamptz,
            last_run_summary jsonb,
            consecutive_failures integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT uq_ingestion_sources_tenant_name UNIQUE (tenant_id, name),
            CONSTRAINT ck_ingestion_sources_one_schedule
                CHECK (schedule_cron IS NULL OR schedule_interval_s IS NULL)
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_ingestion_sources_scheduled ON ingestion_sources (id) "
        "WHERE enabled AND (schedule_cron IS NOT NULL OR schedule_interval_s IS NOT NULL)"
    )
    op.execute(
        """
        CREATE TABLE ingestion_runs (
            id uuid PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            source_id uuid NOT NULL REFERENCES ingestion_sources(id) ON DELETE CASCADE,
            trigger text NOT NULL CHECK (trigger IN ('scheduled', 'manual', 'backfill')),
            window_start date,
            window_end date,
            files jsonb,
            scheduled_for timestamptz,
            status text NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            attempt integer NOT NULL DEFAULT 0,
            max_attempts integer NOT NULL,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            lease_owner text,
            lease_expires_at timestamptz,
            heartbeat_at timestamptz,
            cancel_requested_at timestamptz,
            stage text,
            current_item text,
            rows_read bigint NOT NULL DEFAULT 0,
            rows_loaded bigint NOT NULL DEFAULT 0,
            rows_duplicate bigint NOT NULL DEFAULT 0,
            rows_rejected bigint NOT NULL DEFAULT 0,
            rows_quarantined bigint NOT NULL DEFAULT 0,
            bytes_read bigint NOT NULL DEFAULT 0,
            error_class text,
            error_message text,
            created_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            finished_at timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT ck_ingestion_runs_window CHECK (window_start IS NULL OR window_end >= window_start)
        )
        """
    )
    # Each schedule slot of a source exists once, whatever the number of replicas.
    op.execute(
        "CREATE UNIQUE INDEX uq_ingestion_runs_slot ON ingestion_runs (source_id, scheduled_for) "
        "WHERE scheduled_for IS NOT NULL"
    )
    # At most one running run per source.
    op.execute(
        "CREATE UNIQUE INDEX uq_ingestion_runs_one_running ON ingestion_runs (source_id) "
        "WHERE status = 'running'"
    )
    op.execute(
        "CREATE INDEX ix_ingestion_runs_queue ON ingestion_runs (next_attempt_at) "
        "WHERE status = 'queued'"
    )
    op.execute(
        "CREATE INDEX ix_ingestion_runs_lease ON ingestion_runs (lease_expires_at) "
        "WHERE status = 'running'"
    )
    op.execute(
        "CREATE INDEX ix_ingestion_runs_tenant_created ON ingestion_runs (tenant_id, created_at DESC)"
    )
    op.execute(
        "CREATE INDEX ix_ingestion_runs_source_created ON ingestion_runs (source_id, created_at DESC)"
    )
    op.execute(
        """
        CREATE TABLE ingestion_quarantine (
            id bigserial PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            run_id uuid NOT NULL REFERENCES ingestion_runs(id) ON DELETE CASCADE,
            source_id uuid NOT NULL,
            item text,
            line_number bigint,
            reason text NOT NULL,
            raw text,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_ingestion_quarantine_run ON ingestion_quarantine (run_id, id)")
    op.execute(
        """
        CREATE TABLE ingestion_file_ledger (
            tenant_id text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            source_id uuid NOT NULL REFERENCES ingestion_sources(id) ON DELETE CASCADE,
            path text NOT NULL,
            sha256 text NOT NULL,
            size bigint NOT NULL,
            mtime timestamptz,
            run_id uuid,
            rows_loaded bigint NOT NULL DEFAULT 0,
            imported_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_ingestion_file_ledger PRIMARY KEY (source_id, path, sha256)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE ingestion_file_ledger")
    op.execute("DROP TABLE ingestion_quarantine")
    op.execute("DROP TABLE ingestion_runs")
    op.execute("DROP TABLE ingestion_sources")
