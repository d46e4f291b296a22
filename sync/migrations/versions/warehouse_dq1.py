"""Data-quality KPIs per source and run, and the state last announced to the ops channel.

Revision ID: warehouse_1
Revises: salesforce_1
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "warehouse_1"  # common.md suggests "warehouse-1"; Alembic refuses "-" in revision ids
down_revision = "salesforce_1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_quality",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("measured_at", sa.DateTime, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("kpi", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("breached", sa.Boolean, nullable=False),
    )
    op.create_index("ix_data_quality_run_id", "data_quality", ["run_id"])
    op.create_table(
        "data_quality_state",
        sa.Column("source", sa.String(32), primary_key=True),
        sa.Column("kpi", sa.String(32), primary_key=True),
        sa.Column("subject", sa.String(128), primary_key=True),
        sa.Column("breached", sa.Boolean, nullable=False),
        sa.Column("since", sa.DateTime),
        sa.Column("announced", sa.Boolean),
    )


def downgrade() -> None:
    op.drop_table("data_quality_state")
    op.drop_index("ix_data_quality_run_id", table_name="data_quality")
    op.drop_table("data_quality")
