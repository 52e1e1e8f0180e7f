"""hot_invalidation: NOTIFY pulse_invalidate <tenant_id> when a tenant's cached facts change

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

The dashboard keeps each tenant's facts in process memory (timezone and conversion
events from ``tenants``, the data version from ``tenant_data_versions``, the rollups'
timezone and conversion events from ``stats_rollup_state``). These triggers tell every
Pulse process when one changes, whoever wrote it (a request, an import, another replica,
psql): ``pg_notify`` is delivered when the transaction commits, never for a rollback.
Events themselves need no trigger: every load that changes them bumps the data version
in its transaction.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("tenants", "tenant_data_versions", "stats_rollup_state")


def upgrade() -> None:
    # One function for every table: "id" is the tenant's id in tenants, tenant_id elsewhere.
    # Identical notifications in one transaction are folded into one by PostgreSQL.
    op.execute(
        """
        CREATE FUNCTION pulse_notify_invalidate() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            tenant text;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                tenant := to_jsonb(OLD) ->> TG_ARGV[0];
            ELSE
                tenant := to_jsonb(NEW) ->> TG_ARGV[0];
            END IF;
            PERFORM pg_notify('pulse_invalidate', tenant);
            RETURN NULL;
        END
        $$
        """
    )
    for table in TABLES:
        column = "id" if table == "tenants" else "tenant_id"
        op.execute(
            f"CREATE TRIGGER {table}_notify_invalidate"
            f" AFTER INSERT OR UPDATE OR DELETE ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION pulse_notify_invalidate('{column}')"
        )


def downgrade() -> None:
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_notify_invalidate ON {table}")
    op.execute("DROP FUNCTION IF EXISTS pulse_notify_invalidate()")
