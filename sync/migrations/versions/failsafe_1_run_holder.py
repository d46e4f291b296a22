"""Runs record the host and process that run them, so a run left `running` by a dead process
shows as `abandoned` (issue 13, "locks that know their holder").

Revision ID: failsafe_1
Revises: warehouse_1
"""

import sqlalchemy as sa
from alembic import op

revision = "failsafe_1"
down_revision = "warehouse_1"  # chained after main's latest revision (all started from 0001)
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("host", sa.String(255)))
        batch.add_column(sa.Column("pid", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("pid")
        batch.drop_column("host")
