"""Slack delivery checks: where each message went and under which key, the channel-name cache, and
which Slack conversations this state has read back.

Revision ID: slack_1
Revises: 0001

- escalations: destination (conversation ID), message_key, started_at, so a maybe-sent marker can be
  looked up in that conversation's history at the next run.
- episodes.task_origin: "created" when this state created the CRM task (nobody else can have
  alerted it), "found" when the CRM already had it.
- slack_channels: channel name -> ID (conversations.list); conversations.history takes IDs only.
- slack_destinations: per conversation, the time window whose healthsync messages were read back;
  slack_seen_items: the item keys those reads found.
"""

import sqlalchemy as sa
from alembic import op

revision = "slack_1"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("escalations") as batch:
        batch.add_column(sa.Column("destination", sa.String(32)))
        batch.add_column(sa.Column("message_key", sa.String(64)))
        batch.add_column(sa.Column("started_at", sa.DateTime))
    with op.batch_alter_table("episodes") as batch:
        batch.add_column(sa.Column("task_origin", sa.String(16)))
    op.create_table(
        "slack_channels",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("channel_id", sa.String(32), nullable=False),
        sa.Column("resolved_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "slack_destinations",
        sa.Column("channel_id", sa.String(32), primary_key=True),
        sa.Column("verified_from", sa.DateTime, nullable=False),
        sa.Column("verified_to", sa.DateTime, nullable=False),
    )
    op.create_table(
        "slack_seen_items",
        sa.Column("channel_id", sa.String(32), primary_key=True),
        sa.Column("item_key", sa.String(32), primary_key=True),
        sa.Column("ts", sa.String(64)),
    )


def downgrade() -> None:
    op.drop_table("slack_seen_items")
    op.drop_table("slack_destinations")
    op.drop_table("slack_channels")
    with op.batch_alter_table("episodes") as batch:
        batch.drop_column("task_origin")
    with op.batch_alter_table("escalations") as batch:
        batch.drop_column("started_at")
        batch.drop_column("message_key")
        batch.drop_column("destination")
