"""Replica versions and the scoring memo: a run with no change reuses the last scores (issue 14).

Revision ID: scale_2
Revises: scale_1

- `replica_versions`: per (crm, object), a counter bumped whenever the replica's content changes
  (a re-read of an unchanged record does not bump it).
- `score_memo`: the scores and open opportunities of the last run that wrote everything, with the
  fingerprint of what they depend on (sync/score_memo.py).

Both are derived: dropping them costs one full scoring on the next run, nothing else.
"""

import sqlalchemy as sa
from alembic import op

revision = "scale_2"
down_revision = "scale_1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replica_versions",
        sa.Column("crm", sa.String(16), primary_key=True),
        sa.Column("object", sa.String(32), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "score_memo",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("score_memo")
    op.drop_table("replica_versions")
