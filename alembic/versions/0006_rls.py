"""rls: row-level security on every tenant-owned table; the pulse_app role and its grants

Revision ID: 0006r
Revises: 0005
Create Date: 2026-12-01

Tenant isolation rested on every query remembering its ``tenant_id`` filter. Each
tenant-owned table now also has a policy: a row is visible and writable only when
its tenant is the transaction's ``pulse.tenant_id`` setting, or when the
transaction says explicitly that it spans tenants (``pulse.all_tenants = 'on'``).
The app sets both per transaction (``app.core.db``).

Policies do not apply to a table's owner or to superusers, so in production Pulse
connects as a login role that is a member of the group role ``pulse_app`` created
here (if missing): it owns nothing, may read and write rows, and cannot change the
schema. Migrations run as the owner (``PULSE_MIGRATION_DATABASE_URL``).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006r"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "pulse_app"

# table -> the column that names the owning tenant
TENANT_TABLES = {
    "tenants": "id",
    "events": "tenant_id",
    "tenant_data_versions": "tenant_id",
    "stats_rollups": "tenant_id",
    "stats_rollup_state": "tenant_id",
    "ingestion_sources": "tenant_id",
    "ingestion_runs": "tenant_id",
    "ingestion_quarantine": "tenant_id",
    "ingestion_file_ledger": "tenant_id",
    "notification_preferences": "tenant_id",
    "notification_outbox": "tenant_id",
    "notification_source_outcomes": "tenant_id",
    "notification_digests": "tenant_id",
}

# The settings are read through scalar subqueries so that PostgreSQL evaluates them
# once per statement (an InitPlan) instead of once per row. The second argument of
# current_setting (missing_ok) makes an unset setting NULL: no row matches.
_RULE = (
    "{column} = (SELECT current_setting('pulse.tenant_id', true))"
    " OR (SELECT current_setting('pulse.all_tenants', true)) = 'on'"
)


def upgrade() -> None:
    # A group role the deployment's login role joins; created only if missing (roles
    # are cluster-wide, and a DBA may have created it beforehand). A concurrent
    # migrator of another database may create it at the same instant.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS;
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END
        $$
        """
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
    op.execute(f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
    # Tables later migrations create get the same grants (they still need their own
    # policy: tests/core/test_rls.py fails for a tenant-owned table without one).
    op.execute(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public"
        f" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}"
    )
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}"
    )
    for table, column in TENANT_TABLES.items():
        rule = _RULE.format(column=column)
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_isolation ON {table} USING ({rule}) WITH CHECK ({rule})")


def downgrade() -> None:
    for table in TENANT_TABLES:
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {APP_ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {APP_ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {APP_ROLE}")
    # The role itself stays: it is cluster-wide and other databases may use it.
