"""What the report needs besides scores: each CRM's own address and daily product-usage snapshots.

Revision ID: report_1
Revises: failsafe_1

- crm_instances: one row per CRM with what the CRM said about itself (Salesforce: the instance URL
  of the login; HubSpot: the portal id and UI domain from GET /account-info/v3/details), so the
  report links every record to its page in that CRM.
- usage_history: one row per account per day (the last run of the day wins) with the product-usage
  figures the customer-facing page charts over time (active users, seats, logins, features).
- score_history gets an index on (scored_at, account_id, score, band): the report reads a year of
  daily scores from the index alone instead of scanning every row with its drivers and dimensions.
"""

import sqlalchemy as sa
from alembic import op

revision = "report_1"
down_revision = "failsafe_1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crm_instances",
        sa.Column("crm", sa.String(16), primary_key=True),
        sa.Column("info_json", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "usage_history",
        sa.Column("account_id", sa.String(128), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("run_id", sa.String(64)),
        sa.Column("active_users", sa.Float),
        sa.Column("seats_purchased", sa.Float),
        sa.Column("logins_per_user_week", sa.Float),
        sa.Column("features_used", sa.Float),
        sa.Column("features_available", sa.Float),
    )
    op.create_index("ix_score_history_scored_at", "score_history", ["scored_at", "account_id", "score", "band"])


def downgrade() -> None:
    op.drop_index("ix_score_history_scored_at", table_name="score_history")
    op.drop_table("usage_history")
    op.drop_table("crm_instances")
