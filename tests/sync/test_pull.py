"""Incremental pull into the replica through the real connectors and the sandbox."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from healthsync.config.settings import load_settings
from healthsync.connectors.hubspot import hubspot_from_ready
from healthsync.connectors.salesforce import salesforce_from_ready
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.pull import pull_object, replica_frame
from healthsync.sync.state import open_store

NOW = datetime(2026, 11, 2, 6, 0, tzinfo=timezone.utc)


@pytest.fixture
def world(tmp_path):
    settings = load_settings()
    with Sandbox(accounts=6, seed=9, precreate_fields=True, slack_message_interval_s=0) as sb:
        store = open_store(f"sqlite:///{tmp_path}/state.db")
        sf = salesforce_from_ready(sb.ready, settings.mapping.salesforce.model_dump(), lookback_minutes=0)
        hs = hubspot_from_ready(sb.ready, settings.mapping.hubspot.model_dump(), lookback_minutes=0)
        yield sb, store, sf, hs
        sf.close()
        hs.close()
        store.close()


def test_given_a_stored_cursor_then_only_changes_are_pulled_and_deletions_become_tombstones(world):
    sb, store, sf, hs = world
    for connector in (sf, hs):
        first = pull_object(store, connector, "accounts", now=NOW)
        assert first.records == 6 and first.since is None and first.cursor is not None
        assert store.cursor(connector.name, "accounts") == first.cursor

    changed, gone = sorted(store.live_ids("salesforce", "accounts"))[:2]
    first_cursor = store.cursor("salesforce", "accounts")
    # SOQL datetime literals have whole seconds (format_soql), so `>=` re-reads everything in the
    # cursor's second: wait past the seeding second so only the modified record shares it
    # (real time, not the emulator clock: the cursor is capped at the run's start on this machine's clock).
    time.sleep(1.1)
    sb.modify("salesforce", "Account", changed[3:], {"QBRs_Missed__c": 2})
    sb.delete("salesforce", "Account", gone[3:])
    # sobjects/{O}/deleted ignores seconds: a deletion is listed once its minute is over
    sb.advance_clock(60)
    third = pull_object(store, sf, "accounts", now=NOW)
    assert third.since == first_cursor and third.deleted == 1
    assert third.cursor > first_cursor
    # `>=` on the cursor re-reads only what shares its timestamp (at-least-once, never a skipped record)
    again = pull_object(store, sf, "accounts", now=NOW)
    assert again.since == third.cursor and again.records <= 1
    frame = replica_frame(store, ["salesforce", "hubspot"], "accounts")
    assert len(frame) == 11 and gone not in set(frame["account_id"])
    assert int(frame.set_index("account_id").loc[changed, "qbrs_missed"]) == 2
    assert set(frame["crm"]) == {"salesforce", "hubspot"}

    archived = sorted(store.live_ids("hubspot", "accounts"))[0]
    sb.delete("hubspot", "companies", archived[3:])
    assert pull_object(store, hs, "accounts", now=NOW).deleted == 1
    assert archived not in store.live_ids("hubspot", "accounts")
