"""The maybe-sent markers of a digest are written in one transaction (issue 14: a transaction per episode cost ~40 s on
a 100,000-account day), and a row another worker already wrote still skips only that episode."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import insert, select

from healthsync.config.settings import load_settings
from healthsync.sync.escalation import EscalationResult, Message, _Route, _Sender
from healthsync.sync.state import open_store

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def _route(n: int) -> _Route:
    msgs = [Message({"episode_id": f"ep-{i}"}, "csm", "alert", "csm@example.com", None, None, None) for i in range(n)]
    return _Route("D0001", None, msgs, "alert", "csm")


def _markers(store) -> set[str]:
    table = store.tables["escalations"]
    with store.engine.connect() as conn:
        return {r.episode_id for r in conn.execute(select(table))}


def test_given_a_digest_then_every_episode_is_claimed(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    try:
        sender = _Sender(store, load_settings(), None, EscalationResult(), False, lambda point: None, NOW)
        claimed = sender._claim(_route(50))
        assert [m.key[0] for m in claimed] == [f"ep-{i}" for i in range(50)]
        assert _markers(store) == {f"ep-{i}" for i in range(50)}
    finally:
        store.close()


def test_given_one_marker_another_worker_wrote_then_only_that_episode_is_skipped(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    try:
        sender = _Sender(store, load_settings(), None, EscalationResult(), False, lambda point: None, NOW)
        table = store.tables["escalations"]
        with store.begin() as conn:  # written after this sender loaded what exists: a concurrent worker
            conn.execute(insert(table).values(episode_id="ep-3", level="csm", kind="alert", recipient="csm@example.com",
                                              destination="D0001", started_at=NOW.replace(tzinfo=None)))
        claimed = sender._claim(_route(6))
        assert [m.key[0] for m in claimed] == ["ep-0", "ep-1", "ep-2", "ep-4", "ep-5"]
        assert _markers(store) == {f"ep-{i}" for i in range(6)}
    finally:
        store.close()
