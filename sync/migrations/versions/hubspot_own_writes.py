"""own_writes: the modification time each CRM gave our last confirmed write to a record.

Revision ID: hubspot_1
Revises: slack_1
Create Date: 2026-12-02

The next pull skips records whose only change since the last read is that write
(issue 14, "an incremental day reads only what others changed"; connectors/BEHAVIOR.md).
"""

import sqlalchemy as sa
from alembic import op

revision = "hubspot_1"
down_revision = "slack_1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "own_writes",
        sa.Column("crm", sa.String(16), primary_key=True),
        sa.Column("object", sa.String(32), primary_key=True),
        sa.Column("record_id", sa.String(128), primary_key=True),
        sa.Column("stamp", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("own_writes")
