"""The product against a Salesforce emulator as strict as a real org (issue 12 items 4, 6, 7, 8).

The official client (simple-salesforce, inside the connector) talks real HTTP to the sandbox;
assertions read the emulated org and its request log.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from healthsync.config.settings import load_settings
from healthsync.connectors.base import Change, ConfigurationError
from healthsync.connectors.salesforce import salesforce_from_ready
from healthsync.connectors.salesforce_fields import healthsync_fields
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.pull import pull_all, pull_object
from healthsync.sync.state import open_store
from healthsync.sync.writeback import desired_outputs, execute_plan, plan_writes
from tests.connectors.conftest import FAST, MAPPING, accounts_only

NOW = datetime(2026, 11, 2, 6, 0, tzinfo=timezone.utc)


def _connect(sb: Sandbox, **kwargs):
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("bulk_poll_seconds", 0.05)
    return salesforce_from_ready(sb.ready, MAPPING["salesforce"], **kwargs)


def _counts(sb: Sandbox, seq: int) -> dict:
    return sb.requests(since=seq, api="salesforce")["counts"].get("salesforce", {})


@pytest.fixture
def settings(tmp_path):
    s = load_settings(environ={})
    s.state.url = f"sqlite:///{tmp_path}/state.db"
    return s


def _scores(ids: list[str], score: float = 55.0) -> pd.DataFrame:
    return pd.DataFrame([{"account_id": rid, "crm": "salesforce", "score": score, "band": "Yellow", "trend": "stable +1.0 (30d)",
                          "drivers": "Logins 1.2/user/week (target 5)", "confidence": 0.9} for rid in ids])


def _no_opps() -> pd.DataFrame:
    return pd.DataFrame({"opportunity_id": [], "crm": [], "adjusted_probability": [], "expected_arr": []})


# ----------------------------------------------------------------------------- item 4: field-level security


def test_given_a_fresh_org_when_setup_runs_then_the_integration_user_can_read_and_write_every_field():
    with Sandbox(portfolio=accounts_only(3, 1), seed=1) as sb:
        conn = _connect(sb)
        created = conn.setup()
        wanted = healthsync_fields(MAPPING["salesforce"])
        assert sorted(created) == sorted(f.permission_name for f in wanted)
        assert conn.check().ok, conn.check().problems
        ps = [r for r in sb.records("salesforce", "PermissionSet") if r["Name"] == "Healthsync_Integration"]
        assert len(ps) == 1
        granted = {r["Field"] for r in sb.records("salesforce", "FieldPermissions")
                   if r["ParentId"] == ps[0]["Id"] and r["PermissionsRead"] and r["PermissionsEdit"]}
        assert granted == {f.permission_name for f in wanted}
        assert [(a["AssigneeId"]) for a in sb.records("salesforce", "PermissionSetAssignment")] == [sb.salesforce.integration_user_id]
        rid = sb.records("salesforce", "Account")[0]["Id"]
        assert conn.push("accounts", [Change(f"sf:{rid}", {"Health_Score__c": 42.5})])[0].ok
        assert sb.record("salesforce", "Account", rid)["Health_Score__c"] == 42.5
        assert conn.setup() == [] and len(sb.records("salesforce", "FieldPermissions")) == len(wanted)  # idempotent


def test_given_fields_created_earlier_but_invisible_when_setup_runs_then_they_exist_already_and_become_usable():
    with Sandbox(portfolio=accounts_only(2, 1), seed=1) as sb:
        for f in healthsync_fields(MAPPING["salesforce"]):  # created by an earlier setup, no access granted
            sb.salesforce.add_custom_field(f.sobject, f.name, f.metadata)
        conn = _connect(sb)
        before = conn.check()
        assert not before.ok and any("Health_Score__c" in p and "not visible" in p for p in before.problems)
        assert conn.setup() == []  # DUPLICATE_DEVELOPER_NAME means "already exists", never "created"
        assert conn.setup_report["already_existed"] and conn.check().ok


def test_given_an_integration_user_that_may_not_grant_access_then_setup_names_the_exact_admin_steps():
    with Sandbox(portfolio=accounts_only(2, 1), seed=1, salesforce_manage_permissions=False) as sb:
        conn = _connect(sb)
        with pytest.raises(ConfigurationError) as refused:
            conn.setup()
        message = str(refused.value)
        assert "Permission Sets > New" in message and "Healthsync_Integration" in message
        assert "Health Score (Health_Score__c)" in message and "Manage Assignments" in message
        assert sb.ready["salesforce"]["username"] in message
        assert "Health_Score__c" in sb.salesforce.fields["Account"]  # the fields were created all the same
        assert not conn.check().ok


# ----------------------------------------------------------------------------- item 6: deletions


def test_given_a_deletion_older_than_the_recycle_bin_when_pulled_then_a_full_reconcile_tombstones_it(tmp_path):
    with Sandbox(portfolio=accounts_only(6, 2), seed=2, precreate_fields=True) as sb:
        store = open_store(f"sqlite:///{tmp_path}/state.db")
        conn = _connect(sb)
        pull_object(store, conn, "accounts", now=NOW)
        victim = sorted(store.live_ids("salesforce", "accounts"))[0]
        sb.delete("salesforce", "Account", victim[3:])
        sb.advance_clock(16 * 86400)  # the product did not run for 16 days: the Recycle Bin was purged
        seq = sb.requests()["last_seq"]
        stats = pull_object(store, conn, "accounts", now=NOW)
        assert stats.deleted == 1 and victim not in store.live_ids("salesforce", "accounts")
        assert len(store.live_ids("salesforce", "accounts")) == 5
        assert any("reconciled" in p for p in stats.problems)
        assert "GET query" in _counts(sb, seq)
        store.close()


def test_given_a_recent_deletion_then_it_comes_from_the_deleted_resource_not_query_all(tmp_path):
    with Sandbox(portfolio=accounts_only(4, 2), seed=2, precreate_fields=True) as sb:
        store = open_store(f"sqlite:///{tmp_path}/state.db")
        conn = _connect(sb)
        pull_object(store, conn, "accounts", now=NOW)
        victim = sorted(store.live_ids("salesforce", "accounts"))[0]
        sb.advance_clock(3600)
        sb.delete("salesforce", "Account", victim[3:])
        sb.advance_clock(60)
        seq = sb.requests()["last_seq"]
        stats = pull_object(store, conn, "accounts", now=NOW)
        assert stats.deleted == 1 and not stats.problems
        counts = _counts(sb, seq)
        assert counts.get("GET sobjects/{O}/deleted") == 1 and "GET query" in counts
        assert not [r for r in sb.requests(since=seq)["requests"] if "/queryAll" in r["path"]]
        store.close()


# ----------------------------------------------------------------------------- item 7: slow Bulk jobs


def test_given_a_bulk_job_slower_than_the_bounded_wait_then_the_next_run_collects_it_without_resending(settings):
    with Sandbox(portfolio=accounts_only(6, 3), seed=3, precreate_fields=True, bulk_polls_in_progress=50) as sb:
        store = open_store(settings.state.url)
        conn = _connect(sb, bulk_threshold=2, bulk_max_wait_s=0.2)
        connectors = {"salesforce": conn}
        ids = [f"sf:{r['Id']}" for r in sb.records("salesforce", "Account")]
        seq = sb.requests()["last_seq"]
        plan = plan_writes(store, settings, desired_outputs(_scores(ids, 61.5), _no_opps(), NOW), ["salesforce"])
        report = execute_plan(store, settings, plan, connectors, run_id="r1", now=NOW)["salesforce"]
        assert (report.pending, report.records_changed, report.failed) == (6, 0, 0)
        polls = _counts(sb, seq).get("GET jobs/ingest/{id}", 0)
        assert 1 <= polls <= 5  # bounded: each poll is a counted API request
        [job] = store.bulk_jobs("salesforce")
        assert sorted(job["records"]) == sorted(ids) and store.failed_queue() == {}
        assert all(r.get("Health_Score__c") is None for r in sb.records("salesforce", "Account"))

        # while the job runs, the next write-back does not plan its records again
        again = plan_writes(store, settings, desired_outputs(_scores(ids, 61.5), _no_opps(), NOW), ["salesforce"])
        assert again.records == [] and again.pending[("salesforce", "accounts")] == 6
        pull_all(store, connectors, now=NOW, objects=("accounts",))
        assert len(store.bulk_jobs("salesforce")) == 1  # still running: kept

        sb.salesforce.bulk_polls_in_progress = 0  # the job finishes now
        pull_all(store, connectors, now=NOW, objects=("accounts",))
        assert store.bulk_jobs("salesforce") == []
        assert all(r["Health_Score__c"] == 61.5 for r in sb.records("salesforce", "Account"))
        confirmed = store.pushed_values("salesforce", "accounts")
        assert sorted(confirmed) == sorted(ids) and all(v["Health_Score__c"] == "61.5" for v in confirmed.values())
        final = plan_writes(store, settings, desired_outputs(_scores(ids, 61.5), _no_opps(), NOW), ["salesforce"])
        assert final.records == [] and final.unchanged[("salesforce", "accounts")] == 6
        assert _counts(sb, seq).get("POST jobs/ingest") == 1  # one job, never resent
        store.close()


# ----------------------------------------------------------------------------- item 8: schema and values


def test_given_the_sandbox_fields_then_they_are_exactly_what_setup_creates():
    with Sandbox(portfolio=accounts_only(2, 1), seed=1, precreate_fields=True) as pre, \
            Sandbox(portfolio=accounts_only(2, 1), seed=1) as fresh:
        _connect(fresh).setup()
        for f in healthsync_fields(MAPPING["salesforce"]):
            a = next(x for x in _connect(pre).describe(f.sobject)["fields"] if x["name"] == f.name)
            b = next(x for x in _connect(fresh).describe(f.sobject)["fields"] if x["name"] == f.name)
            keys = ("type", "precision", "scale", "length", "externalId", "unique", "updateable")
            assert {k: a[k] for k in keys} == {k: b[k] for k in keys}, f.name
        probability = next(f for f in healthsync_fields(MAPPING["salesforce"]) if f.output == "adjusted_probability")
        assert (probability.metadata["type"], probability.metadata["precision"], probability.metadata["scale"]) == ("Number", 5, 4)
        drivers = next(f for f in healthsync_fields(MAPPING["salesforce"]) if f.output == "drivers")
        assert (drivers.metadata["type"], drivers.metadata["length"]) == ("Text", 255)


def test_given_a_number_too_large_for_its_field_then_the_record_fails_alone_and_is_not_retried(small_sandbox):
    sb = small_sandbox
    ids = [r["Id"] for r in sb.records("salesforce", "Account") if not r["IsDeleted"]][:2]
    results = _connect(sb).push("accounts", [Change(f"sf:{ids[0]}", {"Health_Score__c": 123456.7}),
                                             Change(f"sf:{ids[1]}", {"Health_Score__c": 12.3})])
    assert [r.outcome for r in results] == ["failed", "ok"]
    assert results[0].error_code == "NUMBER_OUTSIDE_VALID_RANGE" and results[0].retryable is False


def test_given_locked_rows_then_the_write_back_resends_them_in_smaller_batches_until_written(settings):
    with Sandbox(portfolio=accounts_only(40, 4), seed=4, precreate_fields=True) as sb:
        store = open_store(settings.state.url)
        connectors = {"salesforce": _connect(sb)}
        ids = [f"sf:{r['Id']}" for r in sb.records("salesforce", "Account")]
        sb.set_faults(api="salesforce", lock_burst=25)
        seq = sb.requests()["last_seq"]
        plan = plan_writes(store, settings, desired_outputs(_scores(ids, 33.3), _no_opps(), NOW), ["salesforce"])
        report = execute_plan(store, settings, plan, connectors, run_id="r1", now=NOW)["salesforce"]
        assert (report.records_changed, report.failed) == (40, 0) and store.failed_queue() == {}
        assert all(r["Health_Score__c"] == 33.3 for r in sb.records("salesforce", "Account"))
        patches = [r for r in sb.requests(since=seq, api="salesforce")["requests"] if r["endpoint"] == "PATCH composite/sobjects"]
        assert len(patches) >= 3  # the batch, then the locked records again in smaller batches
        store.close()
