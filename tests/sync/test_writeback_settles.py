"""The write-back settles: what the CRM confirmed is stored exactly per (record, field), so an
unchanged world writes nothing (issue 14 item 2)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from healthsync.config.settings import load_settings
from healthsync.connectors.retry import RetryPolicy
from healthsync.connectors.salesforce import salesforce_from_ready
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.state import dumps, open_store
from healthsync.sync.writeback import desired_outputs, execute_plan, plan_writes

NOW = datetime(2026, 11, 2, 6, 0, tzinfo=timezone.utc)
FAST = RetryPolicy(max_attempts=2, base_wait=0.01, max_wait=0.02, max_retry_after=0.05, timeout=5)


@pytest.fixture
def world(tmp_path):
    settings = load_settings()
    settings.state.url = f"sqlite:///{tmp_path}/state.db"
    with Sandbox(accounts=6, seed=11, precreate_fields=True, slack_message_interval_s=0) as sb:
        store = open_store(settings.state.url)
        sf = salesforce_from_ready(sb.ready, settings.mapping.salesforce.model_dump(), retry=FAST, lookback_minutes=0)
        yield sb, settings, store, {"salesforce": sf}
        sf.close()
        store.close()


def _scores(ids: list[str], **per_id) -> pd.DataFrame:
    rows = []
    for rid in ids:
        row = {"account_id": rid, "crm": "salesforce", "score": 55.0, "band": "Yellow", "trend": "stable +1.0 (30d)",
               "drivers": "Logins 1.2/user/week (target 5)", "confidence": 0.9}
        row.update(per_id.get(rid, {}))
        rows.append(row)
    return pd.DataFrame(rows)


def _no_opps() -> pd.DataFrame:
    return pd.DataFrame({"opportunity_id": [], "crm": [], "adjusted_probability": [], "expected_arr": []})


def _run(store, settings, connectors, scores, at, run_id):
    plan = plan_writes(store, settings, desired_outputs(scores, _no_opps(), at), ["salesforce"])
    reports = execute_plan(store, settings, plan, connectors, run_id=run_id, now=at)
    return plan, reports["salesforce"]


def test_given_records_writing_different_field_sets_in_one_chunk_when_rerun_then_nothing_is_written(world):
    sb, settings, store, connectors = world
    ids = [f"sf:{r['Id']}" for r in sb.records("salesforce", "Account")][:5]
    _, first = _run(store, settings, connectors, _scores(ids), NOW, "r1")
    assert first.records_changed == 5

    # one chunk, three field sets: two records change their score, one its band, one its drivers
    changed = {ids[0]: {"score": 61.0}, ids[1]: {"score": 62.0}, ids[2]: {"band": "Red"}, ids[3]: {"drivers": "NPS 2"}}
    plan, second = _run(store, settings, connectors, _scores(ids, **changed), NOW + timedelta(hours=1), "r2")
    assert second.records_changed == 4
    assert {tuple(sorted(r.fields)) for r in plan.records} == {
        ("Health_Score__c", "Health_Updated__c"), ("Health_Band__c", "Health_Updated__c"),
        ("Health_Drivers__c", "Health_Updated__c")}

    seq = sb.requests()["last_seq"]
    plan, third = _run(store, settings, connectors, _scores(ids, **changed), NOW + timedelta(hours=2), "r3")
    assert plan.records == [] and third.records_changed == 0 and third.unchanged == 5
    assert [r for r in sb.requests(since=seq, api="salesforce")["requests"] if r["method"] == "PATCH"] == []
    # what is stored is exactly what the CRM holds, field by field
    pushed = store.pushed_values("salesforce", "accounts")
    for rid in ids:
        record = sb.record("salesforce", "Account", rid[3:])
        for field in ("Health_Score__c", "Health_Band__c", "Health_Drivers__c", "Health_Trend__c", "Health_Confidence__c"):
            assert pushed[rid][field] == dumps(record[field]), (rid, field)
