"""Replica versions, the replica's frame cache and the scoring memo (issue 14: runs at 100,000 accounts per CRM).

Revision ID: scale_2
Revises: scale_1

- `replica_versions`: per (crm, object), a counter bumped whenever the replica's content changes
  (a re-read of an unchanged record does not bump it).
- `replica.row_version`: the version that last changed the row (NULL: before this revision), indexed, so the
  rows changed since a version are read alone.
- `replica_frames`: per (crm, object), the live replica as a typed Parquet frame at a version
  (sync/replica_frames.py): a day with 1% changed reads the frame and the changed rows, not 3M JSON texts.
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
    with op.batch_alter_table("replica") as batch:
        batch.add_column(sa.Column("row_version", sa.BigInteger, nullable=True))
    op.create_index("ix_replica_row_version", "replica", ["crm", "object", "row_version"])
    op.create_table(
        "replica_frames",
        sa.Column("crm", sa.String(16), primary_key=True),
        sa.Column("object", sa.String(32), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
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
    op.drop_table("replica_frames")
    op.drop_index("ix_replica_row_version", table_name="replica")
    with op.batch_alter_table("replica") as batch:
        batch.drop_column("row_version")
    op.drop_table("replica_versions")
