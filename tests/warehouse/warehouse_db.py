"""Warehouses for the warehouse-source tests: a real DuckDB file and a real PostgreSQL database.

`load_warehouse(url, events, touchpoints)` creates `usage_events(account_key, occurred_at, user_id,
feature, value)` and `touchpoints(account_key, touched_at, channel)` with the given rows (and an
index on each timestamp, as a warehouse table would have) in whichever database the URL names.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

END = datetime(2026, 3, 1, 0, 0, 0)  # the run's "now" in these tests (naive UTC)


def ago(days: float) -> datetime:
    return END - timedelta(days=days)


def load_warehouse(url: str, events: list[dict], touchpoints: list[dict] | None = None) -> str:
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    ev = sa.Table(
        "usage_events", meta,
        sa.Column("account_key", sa.String(64)),
        sa.Column("occurred_at", sa.DateTime, index=True),
        sa.Column("user_id", sa.String(64)),
        sa.Column("feature", sa.String(64)),
        sa.Column("value", sa.Double),
    )
    tp = sa.Table(
        "touchpoints", meta,
        sa.Column("account_key", sa.String(64)),
        sa.Column("touched_at", sa.DateTime, index=True),
        sa.Column("channel", sa.String(32)),
    )
    try:
        meta.drop_all(engine)
        meta.create_all(engine)
        with engine.begin() as conn:
            if events:
                conn.execute(ev.insert(), events)
            if touchpoints:
                conn.execute(tp.insert(), touchpoints)
    finally:
        engine.dispose()
    return url
