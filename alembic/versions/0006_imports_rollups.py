"""imports_rollups: per-session facts, so rollups are updated per row loaded

Revision ID: 0006i
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006i"
down_revision: str | Sequence[str] | None = "0006f"
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
    # Row-level security, as every tenant-owned table (migration 0006r).
    rule = (
        "tenant_id = (SELECT current_setting('pulse.tenant_id', true))"
        " OR (SELECT current_setting('pulse.all_tenants', true)) = 'on'"
    )
    op.execute("ALTER TABLE stats_sessions ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY tenant_isolation ON stats_sessions USING ({rule}) WITH CHECK ({rule})"
    )
    # Only a table's owner may ANALYZE it (PostgreSQL 16), and the app connects as a
    # role that owns nothing: after a large load it asks the owner's function instead.
    # SECURITY DEFINER with a fixed search_path; it can do nothing but analyse events.
    op.execute(
        """
        CREATE FUNCTION pulse_analyze_events() RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
        AS $$ BEGIN ANALYZE public.events; END $$
        """
    )
    op.execute("REVOKE ALL ON FUNCTION pulse_analyze_events() FROM PUBLIC")
    op.execute("GRANT EXECUTE ON FUNCTION pulse_analyze_events() TO pulse_app")


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS pulse_analyze_events()")
    op.execute("ALTER TABLE stats_rollup_state DROP COLUMN IF EXISTS sessions_built")
    op.execute("DROP TABLE IF EXISTS stats_sessions")
