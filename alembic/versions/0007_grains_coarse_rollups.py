"""grains_coarse_rollups: week and month rollup rows, and how many day rows each merges

Revision ID: 0007g
Revises: 0007a
Create Date: 2026-12-01

``stats_rollups`` gains week (grain 2) and month (grain 3) rows, derived from the day
rows (:mod:`app.modules.events.grains`); the grain column already takes any small
integer and the table's row-level security policy covers the new rows. A query merges
one row per week or month instead of seven or thirty day rows, but a group made of a
single *day* row is answered with that day's exact distinct counts: ``day_rows`` says
how many day rows a coarse row merges (NULL for hour and day rows: one). Nullable with
no default, so adding it rewrites nothing and writers of hour/day rows are unchanged.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007g"
down_revision: str | Sequence[str] | None = "0007a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE stats_rollups ADD COLUMN day_rows smallint")


def downgrade() -> None:
    op.execute("DELETE FROM stats_rollups WHERE grain IN (2, 3)")
    op.execute("ALTER TABLE stats_rollups DROP COLUMN day_rows")
