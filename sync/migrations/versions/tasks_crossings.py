"""Playbooks on crossings and a daily cap per owner: condition memory, queued episodes, create attempts.

Revision ID: tasks_1
Revises: report_1

- `playbook_conditions`: whether each playbook's condition held per account when last known
  (a `trigger: crossing` playbook fires when it turns true between two scored runs).
- `episodes.task_attempted_at`: a task create was sent without a definite answer at this real time;
  HubSpot search shows it only after its index lag, so it is looked up after that, not re-created.
- `episodes.released_at`: when the task went to its owner (the per-owner daily cap counts these).
"""

import sqlalchemy as sa
from alembic import op

revision = "tasks_1"  # Alembic refuses "-" in revision ids
down_revision = "report_1"  # chained after main's head (the lead may re-chain)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "playbook_conditions",
        sa.Column("crm", sa.String(16), primary_key=True),
        sa.Column("account_id", sa.String(128), primary_key=True),
        sa.Column("playbook", sa.String(64), primary_key=True),
        sa.Column("holds", sa.Boolean, nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("changed_at", sa.DateTime),
    )
    with op.batch_alter_table("episodes") as batch:
        batch.add_column(sa.Column("task_attempted_at", sa.DateTime))
        batch.add_column(sa.Column("released_at", sa.DateTime))


def downgrade() -> None:
    with op.batch_alter_table("episodes") as batch:
        batch.drop_column("released_at")
        batch.drop_column("task_attempted_at")
    op.drop_table("playbook_conditions")
