"""State store: migrations, cursors with records in one transaction, pushed/failed bookkeeping, locks."""

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect, select

from healthsync.sync.state import StateStore, dumps, head_revision, metadata, open_store

T0 = datetime(2026, 1, 5, 6, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/nested/dir/state.db")
    yield s
    s.close()


def test_given_new_database_when_migrated_then_every_contract_table_exists_and_version_recorded(store):
    names = set(inspect(store.engine).get_table_names())
    expected = {"runs", "cursors", "replica", "score_history", "pushed", "failed_records", "episodes",
                "escalations", "locks", "drift", "backtests", "alembic_version"}
    assert expected <= names
    assert store.version() == head_revision()


def test_given_migrated_database_when_migrated_again_then_nothing_is_rebuilt(store):
    with store.begin() as conn:
        store.set_cursor(conn, "salesforce", "accounts", T0)
    assert store.migrate() == head_revision()
    assert store.cursor("salesforce", "accounts") == T0


def test_given_a_failure_inside_the_transaction_then_neither_records_nor_cursor_are_stored(store):
    with pytest.raises(RuntimeError):
        with store.begin() as conn:
            store.upsert_replica(conn, "hubspot", "accounts", ["hs:1"], ['{"account_id": "hs:1"}'], T0)
            store.set_cursor(conn, "hubspot", "accounts", T0)
            raise RuntimeError("crash between store and commit")
    assert store.cursor("hubspot", "accounts") is None
    assert store.load_replica("hubspot", "accounts") == []


def test_given_replica_records_when_deleted_then_they_leave_the_replica_with_their_pushed_and_failed_rows(store):
    with store.begin() as conn:
        store.upsert_replica(conn, "salesforce", "accounts", ["sf:1", "sf:2"], ['{"a": 1}', '{"a": 2}'], T0)
    store.record_confirmed("salesforce", "accounts", {"sf:1": {"Health_Score__c": "50.0"}, "sf:2": {"Health_Score__c": "60.0"}}, "r1", T0)
    store.record_failed("salesforce", "accounts", [{"record_id": "sf:1", "fields": {"Health_Band__c": "Red"}}], "r1", T0)
    with store.begin() as conn:
        assert store.mark_deleted(conn, "salesforce", "accounts", ["sf:1"], T0) == 1
    assert store.load_replica("salesforce", "accounts") == [{"a": 2}]
    assert store.pushed_values("salesforce", "accounts") == {"sf:2": {"Health_Score__c": "60.0"}}
    assert store.failed_queue() == {}


def test_given_failures_twice_then_attempts_count_and_confirmation_clears_the_queue(store):
    fail = [{"record_id": "hs:9", "fields": {"health_score": 12.5}, "error_code": "X", "message": "bad", "retryable": True}]
    store.record_failed("hubspot", "accounts", fail, "r1", T0)
    store.record_failed("hubspot", "accounts", fail, "r2", T0 + timedelta(hours=1))
    row = store.failed_queue()[("hubspot", "accounts", "hs:9")]
    assert row["attempts"] == 2 and row["run_id"] == "r2"
    assert row["first_failed_at"] < row["last_failed_at"]
    store.record_confirmed("hubspot", "accounts", {"hs:9": {"health_score": dumps(12.5)}}, "r3", T0)
    assert store.failed_queue() == {}
    assert store.pushed_values("hubspot", "accounts") == {"hs:9": {"health_score": "12.5"}}


def test_given_a_held_lock_then_another_holder_waits_until_it_expires(store):
    assert store.acquire_lock("run", "a", 60, now=T0)
    assert not store.acquire_lock("run", "b", 60, now=T0 + timedelta(seconds=30))
    assert store.acquire_lock("run", "a", 60, now=T0 + timedelta(seconds=30))  # re-entrant renewal
    assert store.acquire_lock("run", "b", 60, now=T0 + timedelta(seconds=120))  # expired
    store.release_lock("run", "a")  # not the holder: no effect
    assert not store.acquire_lock("run", "a", 60, now=T0 + timedelta(seconds=130))
    store.release_lock("run", "b")
    assert store.acquire_lock("run", "a", 60, now=T0 + timedelta(seconds=130))


def test_dumps_is_canonical_for_numpy_and_pandas_values():
    import numpy as np
    import pandas as pd

    assert dumps(np.float64(1.5)) == dumps(1.5) == "1.5"
    assert dumps(pd.NA) == dumps(float("nan")) == "null"
    assert dumps(pd.Timestamp("2026-01-01T00:00:00Z")) == '"2026-01-01T00:00:00"'


def test_given_the_revisions_applied_then_the_database_matches_the_tables_the_code_queries(store):
    """A column added to sync/state.py without an Alembic revision would only exist on new databases."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_given_a_database_of_the_pre_alembic_migrations_when_opened_then_it_is_adopted_not_rebuilt(tmp_path):
    from sqlalchemy import create_engine, text

    from alembic import command

    from healthsync.sync.state import StateStore, _alembic_config

    url = f"sqlite:///{tmp_path}/old.db"
    s = StateStore(url)
    with s.begin() as conn:  # the schema the pre-Alembic migrations left: revision 0001, not head
        command.upgrade(_alembic_config(conn), "0001")
    with s.begin() as conn:
        s.set_cursor(conn, "hubspot", "accounts", T0)
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at DATETIME, description VARCHAR(200))"))
        conn.execute(text("INSERT INTO schema_version VALUES (1, '2026-01-01', 'initial')"))
    s.close()
    again = open_store(url)
    assert again.version() == head_revision()
    assert again.cursor("hubspot", "accounts") == T0
    again.close()
