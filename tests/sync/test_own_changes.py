"""Incremental Salesforce pulls read only what others changed, and our writes never hide their edits (issue 14 item 1)."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from healthsync.config.settings import load_settings
from healthsync.connectors.retry import RetryPolicy
from healthsync.connectors.salesforce import salesforce_from_ready
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.pull import pull_object, replica_frame
from healthsync.sync.state import open_store
from healthsync.sync.writeback import desired_outputs, execute_plan, plan_writes

NOW = datetime(2026, 11, 2, 6, 0, tzinfo=timezone.utc)
FAST = RetryPolicy(max_attempts=2, base_wait=0.01, max_wait=0.02, max_retry_after=0.05, timeout=5)


@pytest.fixture
def world(tmp_path):
    settings = load_settings(environ={})
    settings.state.url = f"sqlite:///{tmp_path}/state.db"
    with Sandbox(accounts=8, seed=12, precreate_fields=True, slack_message_interval_s=0) as sb:
        store = open_store(settings.state.url)
        sf = salesforce_from_ready(sb.ready, settings.mapping.salesforce.model_dump(), retry=FAST, lookback_minutes=0)
        yield sb, settings, store, sf
        sf.close()
        store.close()


def _write_scores(store, settings, sf, ids, score, run_id):
    scores = pd.DataFrame([{"account_id": rid, "crm": "salesforce", "score": score, "band": "Yellow", "trend": "flat",
                            "drivers": "d", "confidence": 0.5} for rid in ids])
    opps = pd.DataFrame({"opportunity_id": [], "crm": [], "adjusted_probability": [], "expected_arr": []})
    plan = plan_writes(store, settings, desired_outputs(scores, opps, NOW), ["salesforce"])
    return execute_plan(store, settings, plan, {"salesforce": sf}, run_id=run_id, now=NOW)["salesforce"]


def test_given_our_own_writes_when_pulling_incrementally_then_only_others_changes_are_read(world):
    sb, settings, store, sf = world
    assert pull_object(store, sf, "accounts", now=NOW).records == 8
    ids = sorted(store.live_ids("salesforce", "accounts"))
    sb.advance_clock(120)
    assert _write_scores(store, settings, sf, ids, 44.0, "r1").records_changed == 8
    sb.advance_clock(120)
    sb.modify("salesforce", "Account", ids[3][3:], {"QBRs_Missed__c": 3})  # someone else
    seq = sb.requests()["last_seq"]
    again = pull_object(store, sf, "accounts", now=NOW)
    assert again.records == 1  # the 8 records we wrote are not read back, the one a person changed is
    query = [r for r in sb.requests(since=seq, api="salesforce")["requests"] if r["endpoint"] == "GET query"]
    assert len(query) == 1
    frame = replica_frame(store, ["salesforce"], "accounts").set_index("account_id")
    assert int(frame.loc[ids[3], "qbrs_missed"]) == 3


def test_given_an_edit_between_our_pull_and_our_write_then_the_guard_sweep_reads_it_before_our_write_hides_it(world):
    sb, settings, store, sf = world
    pull_object(store, sf, "accounts", now=NOW)
    ids = sorted(store.live_ids("salesforce", "accounts"))
    sb.advance_clock(120)
    # a person edits an account after our pull, while the run is scoring
    sb.modify("salesforce", "Account", ids[2][3:], {"ARR__c": 987654.0})
    report = _write_scores(store, settings, sf, ids, 51.0, "r1")
    assert report.records_changed == 8
    record = sb.record("salesforce", "Account", ids[2][3:])
    assert record["LastModifiedById"] == sb.salesforce.integration_user_id  # our write now hides who edited it
    frame = replica_frame(store, ["salesforce"], "accounts").set_index("account_id")
    assert float(frame.loc[ids[2], "arr"]) == 987654.0  # read by the guard sweep before our write
    sb.advance_clock(120)
    assert pull_object(store, sf, "accounts", now=NOW).records == 0  # and nothing is lost by not re-reading it


def test_given_exclude_own_changes_off_then_our_writes_are_read_back(world):
    sb, settings, store, _ = world
    sf = salesforce_from_ready(sb.ready, settings.mapping.salesforce.model_dump(), retry=FAST, lookback_minutes=0,
                               exclude_own_changes=False)
    pull_object(store, sf, "accounts", now=NOW)
    ids = sorted(store.live_ids("salesforce", "accounts"))
    sb.advance_clock(120)
    _write_scores(store, settings, sf, ids, 40.0, "r1")
    sb.advance_clock(120)
    assert pull_object(store, sf, "accounts", now=NOW).records == 8
    sf.close()
