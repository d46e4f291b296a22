"""Write-back against the sandbox: allowlist, diff basis, retry queue, invalid records, batch splitting, deletions."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from healthsync.config.settings import load_settings
from healthsync.connectors.base import Change, StopRunError
from healthsync.connectors.hubspot import hubspot_from_ready
from healthsync.connectors.retry import RetryPolicy
from healthsync.connectors.salesforce import salesforce_from_ready
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.pull import pull_object
from healthsync.sync.state import open_store
from healthsync.sync.writeback import (
    ConfirmedPrefetch,
    WriteNotAllowedError,
    _push_split,
    assert_allowed,
    desired_outputs,
    execute_plan,
    plan_writes,
)

NOW = datetime(2026, 11, 2, 6, 0, tzinfo=timezone.utc)
FAST = RetryPolicy(max_attempts=2, base_wait=0.01, max_wait=0.02, max_retry_after=0.05, timeout=5)


@pytest.fixture(scope="module")
def sb():
    sandbox = Sandbox(accounts=8, seed=4, precreate_fields=True, slack_message_interval_s=0).start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def settings(tmp_path):
    s = load_settings()
    s.state.url = f"sqlite:///{tmp_path}/state.db"
    return s


@pytest.fixture
def store(settings):
    s = open_store(settings.state.url)
    yield s
    s.close()


@pytest.fixture
def connectors(sb, settings):
    out = {
        "salesforce": salesforce_from_ready(sb.ready, settings.mapping.salesforce.model_dump(), retry=FAST, lookback_minutes=0),
        "hubspot": hubspot_from_ready(sb.ready, settings.mapping.hubspot.model_dump(), retry=FAST, lookback_minutes=0),
    }
    yield out
    for c in out.values():
        c.close()


def _scores(ids_by_crm: dict[str, list[str]], score: float = 55.0, **extra) -> pd.DataFrame:
    rows = []
    for crm, ids in ids_by_crm.items():
        for rid in ids:
            rows.append({"account_id": rid, "crm": crm, "score": score, "band": "Yellow", "trend": "stable +1.0 (30d)",
                         "drivers": "Logins 1.2/user/week (target 5)", "confidence": 0.9, **extra})
    return pd.DataFrame(rows)


def _no_opps() -> pd.DataFrame:
    return pd.DataFrame({"opportunity_id": [], "crm": [], "adjusted_probability": [], "expected_arr": []})


def _sf_ids(sb, n):
    return [f"sf:{r['Id']}" for r in sb.records("salesforce", "Account") if not r["IsDeleted"]][:n]


def _hs_ids(sb, n):
    return [f"hs:{r['id']}" for r in sb.records("hubspot", "companies") if not r["archived"]][:n]


def test_given_a_field_outside_the_allowlist_then_it_is_refused_before_any_request(sb, settings, connectors):
    with pytest.raises(WriteNotAllowedError, match="Name"):
        assert_allowed(settings, "salesforce", "accounts", {"Health_Score__c": 1, "Name": "x"})
    seq = sb.requests()["last_seq"]
    with pytest.raises(WriteNotAllowedError):
        _push_split(connectors["salesforce"], "accounts", [Change(_sf_ids(sb, 1)[0], {"Name": "Hijacked"})], settings, "salesforce")
    assert sb.requests(since=seq)["requests"] == []


def test_given_an_output_removed_from_the_mapping_then_it_is_never_written_nor_blanked(sb, settings, store, connectors):
    ids = {"salesforce": _sf_ids(sb, 2)}
    plan = plan_writes(store, settings, desired_outputs(_scores(ids, drivers="first"), _no_opps(), NOW), ["salesforce"])
    execute_plan(store, settings, plan, connectors, run_id="r1", now=NOW)
    del settings.mapping.salesforce.account.write["drivers"]
    plan = plan_writes(store, settings, desired_outputs(_scores(ids, score=60.0, drivers="second"), _no_opps(), NOW), ["salesforce"])
    assert plan.records and all("Health_Drivers__c" not in r.fields for r in plan.records)
    execute_plan(store, settings, plan, connectors, run_id="r2", now=NOW)
    for rid in ids["salesforce"]:
        rec = sb.record("salesforce", "Account", rid[3:])
        assert rec["Health_Drivers__c"] == "first" and rec["Health_Score__c"] == 60.0


def test_given_unchanged_values_then_only_changed_fields_are_sent_and_updated_rides_along(sb, settings, store, connectors):
    ids = {"hubspot": _hs_ids(sb, 3)}
    first = plan_writes(store, settings, desired_outputs(_scores(ids), _no_opps(), NOW), ["hubspot"])
    assert len(first.records) == 3 and all("health_updated" in r.fields for r in first.records)
    execute_plan(store, settings, first, connectors, run_id="r1", now=NOW)
    later = NOW.replace(hour=7)
    same = plan_writes(store, settings, desired_outputs(_scores(ids), _no_opps(), later), ["hubspot"])
    assert same.records == [] and same.unchanged[("hubspot", "accounts")] == 3  # `updated` alone is no change
    scores = _scores(ids)
    scores.loc[0, "band"] = "Red"
    one = plan_writes(store, settings, desired_outputs(scores, _no_opps(), later), ["hubspot"])
    assert [(r.record_id, sorted(r.fields)) for r in one.records] == [(ids["hubspot"][0], ["health_band", "health_updated"])]
    assert one.records[0].diff()["health_band"] == {"before": "Yellow", "after": "Red"}


def test_given_a_lost_confirmation_then_the_record_is_retried_even_when_its_values_return_to_the_confirmed_ones(
    sb, settings, store, connectors
):
    ids = {"hubspot": _hs_ids(sb, 2)}
    execute_plan(store, settings, plan_writes(store, settings, desired_outputs(_scores(ids, score=50.0), _no_opps(), NOW), ["hubspot"]),
                 connectors, run_id="r1", now=NOW)
    # the CRM applies score 70 but every answer is lost: nothing is confirmed, both records are queued
    sb.set_faults(api="hubspot", lost_response_rate=1.0)
    try:
        plan = plan_writes(store, settings, desired_outputs(_scores(ids, score=70.0), _no_opps(), NOW), ["hubspot"])
        with pytest.raises(StopRunError) as stop:
            execute_plan(store, settings, plan, connectors, run_id="r2", now=NOW)
    finally:
        sb.clear_faults()
    assert stop.value.reports["hubspot"].failed == 2
    assert set(rid for (_, _, rid) in store.failed_queue()) == set(ids["hubspot"])
    assert all(sb.record("hubspot", "companies", r[3:])["properties"]["health_score"] in ("70", "70.0") for r in ids["hubspot"])
    # desired goes back to the confirmed 50: a diff alone would send nothing and leave 70 in the CRM
    plan = plan_writes(store, settings, desired_outputs(_scores(ids, score=50.0), _no_opps(), NOW), ["hubspot"])
    assert sorted(r.record_id for r in plan.records) == sorted(ids["hubspot"]) and all(r.retry for r in plan.records)
    reports = execute_plan(store, settings, plan, connectors, run_id="r3", now=NOW)
    assert reports["hubspot"].records_changed == 2 and reports["hubspot"].retried == 2
    assert all(sb.record("hubspot", "companies", r[3:])["properties"]["health_score"] in ("50", "50.0") for r in ids["hubspot"])
    assert store.failed_queue() == {}


def test_given_invalid_records_then_they_are_reported_apart_and_not_queued(sb, settings, store, connectors):
    good = _sf_ids(sb, 1)
    scores = pd.concat([
        _scores({"salesforce": good}),
        _scores({"salesforce": ["sf:001ZZ0000000000BAD"]}, score=150.0),  # out of range: caught by the planner
        _scores({"salesforce": ["sf:not-an-id"]}),  # caught by the connector before sending
        _scores({"salesforce": ["hs:123"]}),  # another CRM's id in the Salesforce rows
    ], ignore_index=True)
    plan = plan_writes(store, settings, desired_outputs(scores, _no_opps(), NOW), ["salesforce"])
    assert {(i.record_id, i.error_code) for i in plan.invalid} == {("sf:001ZZ0000000000BAD", "OUT_OF_RANGE"), ("hs:123", "INVALID_ID")}
    reports = execute_plan(store, settings, plan, connectors, run_id="r1", now=NOW)
    sf = reports["salesforce"]
    assert (sf.records_changed, sf.invalid, sf.failed) == (1, 3, 0)
    assert store.failed_queue() == {}


def test_given_one_bad_record_in_a_batch_then_the_batch_is_split_until_it_stands_alone(sb, settings, connectors):
    ids = _hs_ids(sb, 5)
    changes = [Change(rid, {"health_score": 42.0 + i}) for i, rid in enumerate(ids)]
    changes[2] = Change(ids[2], {"health_score": "not a number"})
    results = _push_split(connectors["hubspot"], "accounts", changes, settings, "hubspot")
    assert [r.outcome for r in results] == ["ok", "ok", "failed", "ok", "ok"]
    assert float(sb.record("hubspot", "companies", ids[4][3:])["properties"]["health_score"]) == 46.0


def test_given_records_deleted_in_the_crm_then_they_fail_alone_and_leave_the_queue_once_pulled(sb, settings, store, connectors):
    victims = _sf_ids(sb, 8)[-2:]
    keep = _sf_ids(sb, 1)
    pull_object(store, connectors["salesforce"], "accounts", now=NOW)
    for rid in victims:
        sb.delete("salesforce", "Account", rid[3:])
    plan = plan_writes(store, settings, desired_outputs(_scores({"salesforce": keep + victims}, score=33.0), _no_opps(), NOW), ["salesforce"])
    reports = execute_plan(store, settings, plan, connectors, run_id="r1", now=NOW)
    assert (reports["salesforce"].records_changed, reports["salesforce"].failed) == (1, 2)
    assert {rid for (_, _, rid) in store.failed_queue()} == set(victims)
    sb.advance_clock(60)  # Salesforce lists a deletion once its minute is over (sobjects/{O}/deleted ignores seconds)
    stats = pull_object(store, connectors["salesforce"], "accounts", now=NOW)
    assert stats.deleted == 2
    assert store.failed_queue() == {} and not (set(victims) & store.live_ids("salesforce", "accounts"))


def test_given_confirmed_values_read_ahead_then_the_plan_is_the_one_read_in_place(sb, settings, store, connectors):
    ids = {"hubspot": _hs_ids(sb, 3)}
    execute_plan(store, settings, plan_writes(store, settings, desired_outputs(_scores(ids), _no_opps(), NOW), ["hubspot"]),
                 connectors, run_id="r1", now=NOW)
    scores = _scores(ids)
    scores.loc[1, "band"] = "Red"
    ahead = ConfirmedPrefetch(store, settings)
    ahead.start("hubspot")  # read beside the pull (sync/run.py), taken by the plan
    with_prefetch = plan_writes(store, settings, desired_outputs(scores, _no_opps(), NOW), ["hubspot"], prefetched=ahead)
    in_place = plan_writes(store, settings, desired_outputs(scores, _no_opps(), NOW), ["hubspot"])
    assert [(r.record_id, r.fields, r.before) for r in with_prefetch.records] == [(r.record_id, r.fields, r.before) for r in in_place.records]
    assert [r.record_id for r in in_place.records] == [ids["hubspot"][1]] and with_prefetch.unchanged == in_place.unchanged
    assert ahead.take("hubspot", "accounts") is None  # taken once: a later plan reads the store again
