"""The replica's frame cache (sync/replica_frames.py, issue 14): a run reads the cached typed frame plus the rows
changed since, and the result equals the frame read from every record's JSON, column by column and row by row."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from healthsync.config.settings import load_settings
from healthsync.connectors.hubspot import hubspot_from_ready
from healthsync.connectors.salesforce import salesforce_from_ready
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.pull import pull_object, replica_frame
from healthsync.sync.state import dumps, open_store

NOW = datetime(2026, 11, 2, 6, 0, tzinfo=timezone.utc)
CRMS = ["salesforce", "hubspot"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    settings = load_settings()
    path = tmp_path_factory.mktemp("frames")
    with Sandbox(accounts=30, seed=4, precreate_fields=True, slack_message_interval_s=0) as sb:
        store = open_store(f"sqlite:///{path}/state.db")
        sf = salesforce_from_ready(sb.ready, settings.mapping.salesforce.model_dump(), lookback_minutes=0)
        hs = hubspot_from_ready(sb.ready, settings.mapping.hubspot.model_dump(), lookback_minutes=0)
        for connector in (sf, hs):
            for obj in ("accounts", "opportunities", "tickets"):
                pull_object(store, connector, obj, now=NOW)
        sf.close()
        hs.close()
    yield store
    store.close()


def _same(store, obj: str) -> pd.DataFrame:
    cached = replica_frame(store, CRMS, obj)
    fresh = replica_frame(store, CRMS, obj, cache=False)
    pd.testing.assert_frame_equal(cached, fresh, check_like=False)
    return cached


def _mutate(record: dict, key: str, step: int) -> None:
    """One value moved: a number by one, else a timestamp by an hour, else a text changed."""
    for column, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and column != key:
            record[column] = value + 1
            return
    for column, value in record.items():
        if isinstance(value, str) and column.endswith("_at"):
            record[column] = (pd.Timestamp(value) + pd.Timedelta(hours=1)).isoformat()
            return
    column = next(c for c, v in record.items() if isinstance(v, str) and not c.endswith("_id"))
    record[column] = f"{record[column]} ({step})"


def _records(store, crm: str, obj: str) -> list[dict]:
    return store.load_replica(crm, obj)


def _upsert(store, crm: str, obj: str, rows: list[dict], key: str, at: datetime) -> int:
    with store.begin() as conn:
        return store.upsert_replica(conn, crm, obj, [r[key] for r in rows], [dumps(r) for r in rows], at)


@pytest.mark.parametrize("obj,key", [("accounts", "account_id"), ("opportunities", "opportunity_id"), ("tickets", "ticket_id")])
def test_given_changes_additions_and_deletions_then_the_cached_frame_equals_the_fresh_one(store, obj, key):
    rng = random.Random(obj)
    first = _same(store, obj)  # builds the cache
    assert len(first) > 0
    at = NOW
    for step in range(4):
        at += timedelta(hours=1)
        crm = CRMS[step % 2]
        rows = _records(store, crm, obj)
        # a few records change one value (a string column set to another text, a number moved)
        changed = rng.sample(rows, 3)
        for r in changed:
            _mutate(r, key, step)
        assert _upsert(store, crm, obj, changed, key, at) == 3
        # an unchanged re-read changes nothing, not even the version
        version = store.replica_version(crm, obj)
        assert _upsert(store, crm, obj, rng.sample(_records(store, crm, obj), 2), key, at) == 0
        assert store.replica_version(crm, obj) == version
        if step % 2:  # new records: placed where the replica's order puts them
            template = dict(rng.choice(rows))
            new_ids = [f"{template[key][:3]}{'0' if step == 1 else 'z'}NEW{step}{i}" for i in range(2)]
            assert _upsert(store, crm, obj, [{**template, key: i} for i in new_ids], key, at) == 2
        with store.begin() as conn:
            assert store.mark_deleted(conn, crm, obj, [rng.choice(rows)[key]], at) == 1
        frame = _same(store, obj)
        for r in changed:
            assert r[key] in set(frame[key])


def test_given_an_unreadable_cache_then_the_replica_is_read_afresh(store):
    store.set_replica_frame_cache("salesforce", "accounts", store.replica_version("salesforce", "accounts"), b"not parquet")
    _same(store, "accounts")
    assert store.replica_frame_cache("salesforce", "accounts")[1].startswith(b"PAR1")  # rebuilt
