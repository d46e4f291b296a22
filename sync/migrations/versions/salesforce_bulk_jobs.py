"""Pending write-back Bulk jobs: a job still running when its run's bounded wait ended is collected
by a later run instead of being sent again (issue 12 item 7).

Revision ID: salesforce_1
Revises: hubspot_1
"""

import sqlalchemy as sa
from alembic import op

revision = "salesforce_1"
down_revision = "hubspot_1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bulk_jobs",
        sa.Column("crm", sa.String(16), primary_key=True),
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("object", sa.String(32), nullable=False),
        sa.Column("records_json", sa.Text, nullable=False),
        sa.Column("submitted_at", sa.DateTime),
        sa.Column("run_id", sa.String(64)),
    )


def downgrade() -> None:
    op.drop_table("bulk_jobs")
