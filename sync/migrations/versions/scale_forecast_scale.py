"""The forecast's renormalisation scale, kept from run to run (hysteresis, issue 14).

Revision ID: scale_1
Revises: tasks_1

- `forecast_state`: named numbers of the forecast adjustment that must outlive a run; today the
  renormalisation scale the last write-back used. It is kept while the open pipeline stays within
  2% of its unadjusted total with it, so a day on which a few accounts change does not rewrite
  every open deal (engine/forecast.py).
"""

import sqlalchemy as sa
from alembic import op

revision = "scale_1"
down_revision = "tasks_1"  # chained after main's head (the lead may re-chain)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "forecast_state",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("updated_at", sa.DateTime),
    )


def downgrade() -> None:
    op.drop_table("forecast_state")
