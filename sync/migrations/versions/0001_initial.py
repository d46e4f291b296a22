"""Initial schema: runs, cursors, replica, score history, pushed, failed records, episodes,
escalations, locks, drift, backtests.

Revision ID: 0001
Revises:
Create Date: 2026-12-02

A revision is frozen once released: it spells its tables out instead of importing the live
definitions in sync/state.py, which later revisions change.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("mode", sa.String(16)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("summary_json", sa.Text),
        sa.Column("exit_code", sa.Integer),
    )
    op.create_table(
        "cursors",
        sa.Column("crm", sa.String(16), primary_key=True),
        sa.Column("object", sa.String(32), primary_key=True),
        sa.Column("cursor_value", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
    )
    op.create_table(
        "replica",
        sa.Column("crm", sa.String(16), primary_key=True),
        sa.Column("object", sa.String(32), primary_key=True),
        sa.Column("record_id", sa.String(128), primary_key=True),
        sa.Column("data_json", sa.Text),
        sa.Column("modified_at", sa.DateTime),
        sa.Column("deleted", sa.Boolean, nullable=False),
    )
    op.create_table(
        "score_history",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(128), primary_key=True),
        sa.Column("scored_at", sa.DateTime, nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("band", sa.String(64)),
        sa.Column("confidence", sa.Float),
        sa.Column("dimension_json", sa.Text),
        sa.Column("drivers", sa.Text),
        sa.Column("trend", sa.String(64)),
    )
    op.create_table(
        "pushed",
        sa.Column("crm", sa.String(16), primary_key=True),
        sa.Column("object", sa.String(32), primary_key=True),
        sa.Column("record_id", sa.String(128), primary_key=True),
        sa.Column("field", sa.String(128), primary_key=True),
        sa.Column("value_json", sa.Text),
        sa.Column("pushed_at", sa.DateTime),
        sa.Column("run_id", sa.String(64)),
    )
    op.create_table(
        "failed_records",
        sa.Column("crm", sa.String(16), primary_key=True),
        sa.Column("object", sa.String(32), primary_key=True),
        sa.Column("record_id", sa.String(128), primary_key=True),
        sa.Column("fields_json", sa.Text),
        sa.Column("error_code", sa.String(128)),
        sa.Column("message", sa.Text),
        sa.Column("retryable", sa.Boolean),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_failed_at", sa.DateTime),
        sa.Column("last_failed_at", sa.DateTime),
        sa.Column("run_id", sa.String(64)),
    )
    op.create_table(
        "episodes",
        sa.Column("episode_id", sa.String(255), primary_key=True),
        sa.Column("crm", sa.String(16)),
        sa.Column("account_id", sa.String(128)),
        sa.Column("playbook", sa.String(64)),
        sa.Column("status", sa.String(16)),
        sa.Column("opened_at", sa.DateTime),
        sa.Column("closed_at", sa.DateTime),
        sa.Column("close_reason", sa.Text),
        sa.Column("task_key", sa.String(255)),
        sa.Column("task_id", sa.String(128)),
        sa.Column("task_due_at", sa.DateTime),
        sa.Column("task_status", sa.String(32)),
        sa.Column("owner_email", sa.String(255)),
        sa.Column("segment", sa.String(64)),
        sa.Column("last_seen_run", sa.String(64)),
        sa.UniqueConstraint("task_key", name="uq_episodes_task_key"),
    )
    op.create_table(
        "escalations",
        sa.Column("episode_id", sa.String(255), primary_key=True),
        sa.Column("level", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("recipient", sa.String(255)),
        sa.Column("channel", sa.String(128)),
        sa.Column("ts", sa.String(64)),
        sa.Column("sent_at", sa.DateTime),
    )
    op.create_table(
        "locks",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(255)),
        sa.Column("acquired_at", sa.DateTime),
        sa.Column("expires_at", sa.DateTime),
    )
    op.create_table(
        "drift",
        sa.Column("run_id", sa.String(64)),
        sa.Column("metric", sa.String(128)),
        sa.Column("psi", sa.Float),
        sa.Column("warning", sa.Boolean),
    )
    op.create_table(
        "backtests",
        sa.Column("run_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime),
        sa.Column("report_json", sa.Text),
    )


def downgrade() -> None:
    for name in ("backtests", "drift", "locks", "escalations", "episodes", "failed_records", "pushed",
                 "score_history", "replica", "cursors", "runs"):
        op.drop_table(name)
