"""One contract, two CRMs: every test runs against Salesforce and HubSpot through the sandbox.

The official clients talk real HTTP to the loopback emulators; assertions read the
emulated CRM's records and its request log, never the connector's own word.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta, timezone

import pytest

from healthsync.connectors.base import Change, ConfigurationError, CredentialsError, QuotaExhaustedError, StopRunError, TaskSpec
from healthsync.connectors.hubspot import HubSpotConnector, hubspot_from_ready
from healthsync.connectors.salesforce import SalesforceConnector, salesforce_from_ready
from healthsync.connectors.sandbox import Sandbox
from tests.connectors.conftest import FAST, MAPPING, accounts_only


class SalesforceSide:
    api = "salesforce"
    prefix = "sf"
    account_object = "Account"
    task_object = "Task"
    score_field = "Health_Score__c"
    band_field = "Health_Band__c"
    batch_size = 200
    missing_id = "001Hs9999999999AAA"  # well-formed, not in the org

    def connect(self, sb: Sandbox, **kwargs):
        kwargs.setdefault("retry", FAST)
        kwargs.setdefault("bulk_poll_seconds", 0.05)
        return salesforce_from_ready(sb.ready, MAPPING["salesforce"], **kwargs)

    def ids(self, sb: Sandbox, obj: str = "Account") -> list[str]:
        return sorted(r["Id"] for r in sb.records(self.api, obj) if not r.get("IsDeleted"))

    def value(self, record: dict, field: str):
        return record.get(field)

    def stamp(self, record: dict) -> datetime:
        return datetime.fromisoformat(record["SystemModstamp"].replace("+0000", "+00:00"))

    def write_calls(self, log: dict) -> int:
        return sum(1 for r in log["requests"] if r["endpoint"] == "PATCH composite/sobjects" and r["status"] == 200)

    def bulk_jobs(self, log: dict) -> int:
        return sum(1 for r in log["requests"] if r["endpoint"] == "POST jobs/ingest" and r["status"] < 300)

    def modify_name(self, sb, rid, name):
        sb.modify(self.api, "Account", rid, {"Name": name})


class HubSpotSide:
    api = "hubspot"
    prefix = "hs"
    account_object = "companies"
    task_object = "tasks"
    score_field = "health_score"
    band_field = "health_band"
    batch_size = 100
    missing_id = "999999999"

    def connect(self, sb: Sandbox, **kwargs):
        kwargs.setdefault("retry", FAST)
        kwargs.pop("bulk_threshold", None)
        return hubspot_from_ready(sb.ready, MAPPING["hubspot"], **kwargs)

    def ids(self, sb: Sandbox, obj: str = "companies") -> list[str]:
        return sorted((r["id"] for r in sb.records(self.api, obj) if not r.get("archived")), key=int)

    def value(self, record: dict, field: str):
        return record["properties"].get(field)

    def stamp(self, record: dict) -> datetime:
        return datetime.fromisoformat(record["properties"]["hs_lastmodifieddate"].replace("Z", "+00:00"))

    def write_calls(self, log: dict) -> int:
        return sum(1 for r in log["requests"] if r["method"] == "POST" and r["path"].rstrip("/").endswith("/batch/update") and r["status"] < 300)

    def bulk_jobs(self, log: dict) -> int:
        return 0

    def modify_name(self, sb, rid, name):
        sb.modify(self.api, "companies", rid, {"name": name})


@pytest.fixture(params=[SalesforceSide(), HubSpotSide()], ids=["salesforce", "hubspot"])
def crm(request):
    return request.param


def _records_by_id(crm, sb, obj):
    return {r.get("Id", r.get("id")): r for r in sb.records(crm.api, obj)}


def _as_float(v):
    return None if v in (None, "") else float(v)


class TestCrmContract:
    def test_setup_creates_fields_once_and_check_names_what_is_missing(self, crm):
        with Sandbox(portfolio=accounts_only(2, 1), seed=1) as sb:
            conn = crm.connect(sb)
            before = conn.check()
            assert not before.ok
            assert any(crm.score_field in p and "crm setup" in p for p in before.problems)
            created = conn.setup()
            assert any(crm.score_field in c for c in created)
            assert conn.setup() == []  # idempotent
            assert conn.check().ok

    def test_full_pull_returns_every_record_mapped_to_canonical_columns(self, crm, small_sandbox):
        sb = small_sandbox
        conn = crm.connect(sb)
        accounts = [p for p in conn.pull("accounts")]
        frame = accounts[-1].records if len(accounts) == 1 else __import__("pandas").concat([p.records for p in accounts])
        raw = _records_by_id(crm, sb, crm.account_object)
        live = {i for i, r in raw.items() if not (r.get("IsDeleted") or r.get("archived"))}
        assert set(frame["account_id"]) == {f"{crm.prefix}:{i}" for i in live}
        some = frame.iloc[0]
        assert some["owner_email"].endswith("@example.com")
        assert accounts[-1].cursor is not None
        opps = __import__("pandas").concat([p.records for p in conn.pull("opportunities")])
        assert len(opps) > 0 and opps["account_id"].isin(frame["account_id"]).all()
        assert opps["probability"].between(0, 1).all()
        tickets = __import__("pandas").concat([p.records for p in conn.pull("tickets")])
        assert len(tickets) > 0 and set(tickets["priority"].dropna()) <= {"P1", "P2", "P3", "P4"}
        assert set(tickets["status"].dropna()) <= {"open", "closed"}

    def test_incremental_pull_returns_only_modified_records_even_sharing_a_timestamp(self, crm, small_sandbox):
        sb = small_sandbox
        sb.advance_clock(3600)  # everything seeded so far is an hour older than what we modify now
        ids = crm.ids(sb)[:3]
        for rid in ids:
            crm.modify_name(sb, rid, f"Renamed {rid}")
        sb.advance_clock(sb.hubspot.search_lag_seconds)  # HubSpot search sees a change only after its index lag
        stamps = sorted(crm.stamp(sb.record(crm.api, crm.account_object, rid)) for rid in ids)
        since = datetime.now(timezone.utc) + timedelta(minutes=30)  # between the seed and the changes (sandbox clock)
        conn = crm.connect(sb, lookback_minutes=5)
        pages = list(conn.pull("accounts", since))
        got = [i for p in pages for i in p.records["account_id"]]
        assert sorted(got) == sorted(f"{crm.prefix}:{i}" for i in ids)
        # a cursor exactly at the latest shared timestamp still returns every record stamped with it (>=)
        exact = crm.connect(sb, lookback_minutes=0)
        at_last = [i for p in exact.pull("accounts", stamps[-1]) for i in p.records["account_id"]]
        same = [f"{crm.prefix}:{i}" for i in ids if crm.stamp(sb.record(crm.api, crm.account_object, i)) == stamps[-1]]
        assert set(same) <= set(at_last) and len(same) >= 1

    def test_deleted_records_are_reported(self, crm, small_sandbox):
        sb = small_sandbox
        victim = crm.ids(sb)[-1]
        since = datetime.now(timezone.utc) - timedelta(minutes=1)
        sb.advance_clock(1)
        sb.delete(crm.api, crm.account_object, victim)
        sb.advance_clock(60)  # Salesforce lists a deletion once its minute is over (sobjects/{O}/deleted ignores seconds)
        pages = list(crm.connect(sb).pull("accounts", since))
        deleted = [d for p in pages for d in p.deleted_ids]
        assert f"{crm.prefix}:{victim}" in deleted
        assert f"{crm.prefix}:{victim}" not in {i for p in pages for i in p.records["account_id"]}

    @pytest.mark.parametrize("n", [1, 199, 200, 201, 2500])
    def test_push_batches_at_the_api_maximum(self, crm, big_sandbox, n):
        sb = big_sandbox
        ids = crm.ids(sb)[:n]
        assert len(ids) == n
        conn = crm.connect(sb)
        seq = sb.requests()["last_seq"]
        # one decimal: the score field is Number(5,1) (Salesforce rounds to the scale); the decimal differs per n
        changes = [Change(f"{crm.prefix}:{rid}", {crm.score_field: (k % 97) + (n % 10) / 10, crm.band_field: "Yellow"}) for k, rid in enumerate(ids)]
        results = conn.push("accounts", changes)
        log = sb.requests(since=seq, api=crm.api)
        assert [r.record_id for r in results] == [c.record_id for c in changes]
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
        if crm.api == "salesforce" and n > 2000:
            assert crm.bulk_jobs(log) == 1 and crm.write_calls(log) == 0
        else:
            assert crm.write_calls(log) == math.ceil(n / crm.batch_size)
            assert crm.bulk_jobs(log) == 0
        stored = _records_by_id(crm, sb, crm.account_object)
        for k, rid in enumerate(ids):
            assert _as_float(crm.value(stored[rid], crm.score_field)) == pytest.approx((k % 97) + (n % 10) / 10)

    def test_partial_failures_are_reported_per_record(self, crm, small_sandbox):
        sb = small_sandbox
        good = crm.ids(sb)[:2]
        changes = [
            Change(f"{crm.prefix}:{good[0]}", {crm.score_field: 11}),
            Change(f"{crm.prefix}:{crm.missing_id}", {crm.score_field: 12}),
            Change("not-an-id", {crm.score_field: 13}),
            Change(f"{crm.prefix}:{good[1]}", {"Name" if crm.api == "salesforce" else "name": "x"}),
            Change(f"{crm.prefix}:{good[1]}", {crm.score_field: 14}),
        ]
        results = crm.connect(sb).push("accounts", changes)
        assert [r.outcome for r in results] == ["ok", "failed", "invalid", "invalid", "ok"]
        assert results[1].error_code and results[1].message
        assert results[3].error_code == "FIELD_NOT_ALLOWED"
        stored = _records_by_id(crm, sb, crm.account_object)
        assert _as_float(crm.value(stored[good[0]], crm.score_field)) == 11
        assert _as_float(crm.value(stored[good[1]], crm.score_field)) == 14

    def test_tasks_are_created_once_per_key(self, crm, small_sandbox):
        sb = small_sandbox
        account = crm.ids(sb)[0]
        owner = "ana.lopez@example.com"
        due = datetime(2026, 12, 1, tzinfo=timezone.utc)
        specs = [TaskSpec(f"renewal_risk:{account}:{k}", f"{crm.prefix}:{account}", owner, f"Call {k}", "why", due, "high") for k in range(3)]
        first = crm.connect(sb).create_tasks(specs)
        sb.advance_clock(sb.hubspot.search_lag_seconds)  # past HubSpot's search index lag
        # the caller's state says these keys were sent before: found, not created again (HubSpot looks them up
        # once its search index shows them; Salesforce's upsert on the unique external id needs no lookup)
        sent = datetime.now(timezone.utc)
        again = crm.connect(sb).create_tasks([dataclasses.replace(s, attempted_at=sent) for s in specs] + [TaskSpec("x:1", "nope", None, "s", "d", due)])
        assert all(r.ok and r.crm_id for r in first)
        assert [r.crm_id for r in again[:3]] == [r.crm_id for r in first]
        assert again[3].outcome == "invalid"
        key_field = "Healthsync_Key__c" if crm.api == "salesforce" else "healthsync_key"
        keys = [crm.value(r, key_field) if crm.api == "salesforce" else r["properties"].get(key_field) for r in sb.records(crm.api, crm.task_object)]
        for s in specs:
            assert keys.count(s.key) == 1
        sb.advance_clock(30)  # HubSpot search shows new tasks once its index caught up (search lag)
        pulled = [p for p in crm.connect(sb).pull("tasks")][-1].records
        assert {s.key for s in specs} <= set(pulled["key"])
        recent = [p for p in crm.connect(sb).pull("tasks", datetime.now(timezone.utc) - timedelta(minutes=1))][-1].records
        assert {s.key for s in specs} <= set(recent["key"])
        row = pulled[pulled["key"] == specs[0].key].iloc[0]
        assert row["account_id"] == f"{crm.prefix}:{account}" and row["status"] == "open" and row["playbook"] == "renewal_risk"

    def test_429_storm_5xx_bursts_and_dropped_connections_are_survived_exactly_once(self, crm, small_sandbox):
        sb = small_sandbox
        ids = crm.ids(sb)
        conn = crm.connect(sb, bulk_threshold=2000)
        account = ids[1]
        specs = [TaskSpec(f"faults:{account}:{k}", f"{crm.prefix}:{account}", None, f"T{k}", "d", datetime(2026, 12, 2, tzinfo=timezone.utc)) for k in range(5)]
        seq = sb.requests()["last_seq"]
        sb.set_faults(api=crm.api, burst_429=4, retry_after=0, error_rate=0.2, drop_rate=0.2, lost_response_rate=0.2)
        try:
            for value in range(40, 50):  # rounds until every kind of fault was met (deterministic for the seed)
                results = conn.push("accounts", [Change(f"{crm.prefix}:{rid}", {crm.score_field: value}) for rid in ids])
                assert all(r.ok for r in results)
                if {"429", "error", "drop"} <= {r["fault"] for r in sb.requests(since=seq, api=crm.api)["requests"]}:
                    break
            task_results = conn.create_tasks(specs)
        finally:
            sb.clear_faults()
        assert all(r.ok for r in results) and all(r.ok for r in task_results)
        assert conn.stats.retries > 0
        stored = _records_by_id(crm, sb, crm.account_object)
        assert all(_as_float(crm.value(stored[rid], crm.score_field)) == value for rid in ids)
        key_field = "Healthsync_Key__c" if crm.api == "salesforce" else "healthsync_key"
        keys = [r.get(key_field) if crm.api == "salesforce" else r["properties"].get(key_field) for r in sb.records(crm.api, crm.task_object)]
        assert all(keys.count(s.key) == 1 for s in specs)
        faults = {r["fault"] for r in sb.requests(since=seq, api=crm.api)["requests"]}
        assert {"429", "error", "drop"} <= faults  # every kind of fault was actually met

    def test_quota_stop_keeps_progress_and_a_new_connector_resumes(self, crm):
        portfolio = accounts_only(450, 9)
        with Sandbox(portfolio=portfolio, seed=9, precreate_fields=True, salesforce_daily_limit=2, hubspot_daily_limit=3) as sb:
            ids = crm.ids(sb)
            changes = [Change(f"{crm.prefix}:{rid}", {crm.score_field: 7}) for rid in ids]
            with pytest.raises(QuotaExhaustedError) as stopped:
                crm.connect(sb).push("accounts", changes)
            partial = stopped.value.results
            assert len(partial) == len(changes)
            done = [r.record_id for r in partial if r.ok]
            left = [c for c, r in zip(changes, partial) if not r.ok]
            assert done and left and all(r.error_code == "QUOTA_EXHAUSTED" and r.retryable for r in partial if not r.ok)
            if crm.api == "salesforce":  # a fresh connector learns the quota from the 403 REQUEST_LIMIT_EXCEEDED
                with pytest.raises(QuotaExhaustedError):
                    crm.connect(sb).push("accounts", left)
            sb.advance_clock(86400)  # next day: the quota is back
            resumed = crm.connect(sb).push("accounts", left)
            assert all(r.ok for r in resumed)
            stored = _records_by_id(crm, sb, crm.account_object)
            assert all(_as_float(crm.value(stored[rid], crm.score_field)) == 7 for rid in ids)


class TestSalesforceSession:
    def test_expired_session_logs_in_again_and_the_run_goes_on(self, small_sandbox):
        sb = small_sandbox
        conn = SalesforceSide().connect(sb)
        seq = sb.requests()["last_seq"]
        sb.set_faults(api="salesforce", session_expiry_after=3)
        try:
            pages = list(conn.pull("accounts"))
            results = conn.push("accounts", [Change(f"sf:{i}", {"Health_Band__c": "Green"}) for i in SalesforceSide().ids(sb)])
        finally:
            sb.clear_faults()
        assert sum(len(p.records) for p in pages) > 0 and all(r.ok for r in results)
        logins = [r for r in sb.requests(since=seq)["requests"] if r["path"].endswith("/services/oauth2/token")]
        assert logins and all(r["status"] == 200 for r in logins)

    def test_given_a_rejected_token_without_login_credentials_when_pulling_then_a_credentials_error_exit_2(self, small_sandbox):
        sb = small_sandbox
        ready = sb.ready["salesforce"]
        conn = SalesforceConnector(ready["instance_url"], "00Dinvalid!token", ca_file=ready["ca_file"], mapping=MAPPING["salesforce"], retry=FAST)
        with pytest.raises(CredentialsError, match="credentials"):  # exit 2 like every wrong token, never 3
            list(conn.pull("accounts"))

    def test_quota_governor_stops_before_the_configured_share(self, small_sandbox):
        sb = small_sandbox
        probe = SalesforceSide().connect(sb)
        list(probe.pull("owners"))
        used, limit = probe.usage
        conn = SalesforceSide().connect(sb, quota_stop_share=(used + 2) / limit)
        ids = SalesforceSide().ids(sb)
        seq = sb.requests()["last_seq"]
        with pytest.raises(QuotaExhaustedError, match="quota_stop_share"):
            for _ in range(5):
                conn.push("accounts", [Change(f"sf:{i}", {"Health_Trend__c": "up"}) for i in ids])
        sent = [r for r in sb.requests(since=seq, api="salesforce")["requests"] if r["endpoint"] == "PATCH composite/sobjects" and r["status"] == 200]
        assert len(sent) == 2  # the third call was never sent


class TestSecrets:
    SENTINEL = "SENTINEL-s3cr3t-7f1e9c"

    def test_salesforce_bad_credentials_never_leak(self, small_sandbox, caplog):
        caplog.set_level("DEBUG")
        ready = small_sandbox.ready["salesforce"]
        conn = SalesforceConnector(
            ready["instance_url"], self.SENTINEL + "-token", username=ready["username"], password=self.SENTINEL,
            security_token=self.SENTINEL + "st", consumer_key=ready["consumer_key"], ca_file=ready["ca_file"],
            mapping=MAPPING["salesforce"], retry=FAST,
        )
        with pytest.raises(ConfigurationError) as err:
            list(conn.pull("accounts"))
        assert "login failed" in str(err.value)
        assert self.SENTINEL not in str(err.value) and self.SENTINEL not in caplog.text
        with pytest.raises(CredentialsError) as err:  # a refused login: exit 2 from `crm check` too, never set up
            conn.check()
        assert self.SENTINEL not in str(err.value) and self.SENTINEL not in caplog.text

    def test_hubspot_bad_token_never_leaks(self, small_sandbox, caplog):
        caplog.set_level("DEBUG")
        conn = HubSpotConnector(self.SENTINEL, host=small_sandbox.ready["hubspot"]["host"], mapping=MAPPING["hubspot"], retry=FAST)
        with pytest.raises(ConfigurationError) as err:
            list(conn.pull("accounts"))
        assert "access token" in str(err.value)
        assert self.SENTINEL not in str(err.value) and self.SENTINEL not in caplog.text
        with pytest.raises(CredentialsError) as err:  # a rejected token: exit 2 from `crm check` too, never set up
            conn.check()
        assert self.SENTINEL not in str(err.value)


class TestSalesforceSpecifics:
    @pytest.mark.parametrize("auth", ["password", "jwt"])
    def test_given_login_credentials_and_no_token_then_the_connector_logs_in_itself(self, small_sandbox, auth):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        ready = small_sandbox.ready["salesforce"]
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        secret = {"password": {"password": ready["password"]}, "jwt": {"private_key": key}}[auth]
        conn = SalesforceConnector(
            "", auth=auth, username=ready["username"], consumer_key=ready["consumer_key"], ca_file=ready["ca_file"],
            token_url=ready["instance_url"] + "/services/oauth2/token", mapping=MAPPING["salesforce"], retry=FAST, **secret,
        )
        pages = list(conn.pull("accounts"))
        assert sum(len(p.records) for p in pages) == len(SalesforceSide().ids(small_sandbox))
        assert conn.instance_url == ready["instance_url"]  # taken from the token response

    def test_given_more_changes_than_the_threshold_then_one_bulk_job_maps_failed_rows_back(self, small_sandbox):
        import pandas as pd

        sb = small_sandbox
        ids = SalesforceSide().ids(sb)[:4]
        updated = pd.Timestamp("2026-11-01T10:00:00")
        changes = [Change(f"sf:{i}", {"Health_Score__c": 61.5, "Health_Updated__c": updated}) for i in ids]
        changes.insert(2, Change("sf:001Hs9999999999AAA", {"Health_Score__c": 1}))
        bad_value = SalesforceSide().ids(sb)[4]
        changes.append(Change(f"sf:{bad_value}", {"Health_Score__c": "not a number"}))
        changes.append(Change(f"sf:{ids[0]}", {"Health_Score__c": 2}))  # the same record twice in one push
        seq = sb.requests()["last_seq"]
        results = SalesforceSide().connect(sb, bulk_threshold=3).push("accounts", changes)
        log = sb.requests(since=seq, api="salesforce")
        assert SalesforceSide().bulk_jobs(log) == 1 and SalesforceSide().write_calls(log) == 0
        assert [r.outcome for r in results] == ["ok", "ok", "failed", "ok", "ok", "failed", "invalid"]
        assert results[6].error_code == "DUPLICATE_ID"
        assert results[2].error_code == "INVALID_CROSS_REFERENCE_KEY"
        assert results[5].error_code == "INVALID_TYPE_ON_FIELD_IN_RECORD"
        record = sb.record("salesforce", "Account", ids[1])
        assert record["Health_Score__c"] == 61.5 and record["Health_Updated__c"].startswith("2026-11-01T10:00:00")


    def test_given_a_bulk_job_that_fails_as_a_whole_then_every_row_is_reported_failed_not_raised(self):
        with Sandbox(portfolio=accounts_only(4, 3), seed=3) as sb:  # healthsync fields NOT created
            ids = SalesforceSide().ids(sb)
            results = SalesforceSide().connect(sb, bulk_threshold=2).push("accounts", [Change(f"sf:{i}", {"Health_Score__c": 1}) for i in ids])
        assert [r.outcome for r in results] == ["failed"] * len(ids)
        assert all(r.error_code == "BULK_JOB_FAILED" and "Health_Score__c" in r.message for r in results)


class TestHubSpotSpecifics:
    def test_given_one_bad_value_when_the_batch_is_rejected_then_it_is_split_until_isolated(self, small_sandbox):
        import pandas as pd

        sb = small_sandbox
        ids = HubSpotSide().ids(sb)[:4]
        changes = [Change(f"hs:{i}", {"health_score": 33, "health_updated": pd.Timestamp("2026-11-01T10:00:00")}) for i in ids]
        changes[1] = Change(f"hs:{ids[1]}", {"health_score": "abc"})
        results = HubSpotSide().connect(sb).push("accounts", changes)
        assert [r.outcome for r in results] == ["ok", "failed", "ok", "ok"]
        assert results[1].error_code == "VALIDATION_ERROR" and "health_score" in results[1].message
        stored = sb.record("hubspot", "companies", ids[3])["properties"]
        assert float(stored["health_score"]) == 33 and stored["health_updated"].startswith("2026-11-01T10:00:00")


def test_pacer_never_exceeds_its_budget_in_any_window():
    from healthsync.connectors.hubspot import _Pacer

    now = [0.0]
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    pacer = _Pacer(budget=3, window=10.0, clock=lambda: now[0], sleep=sleep)
    stamps = []
    for _ in range(10):
        pacer.wait()
        stamps.append(now[0])
        now[0] += 0.5  # each request takes half a second
    for i, t in enumerate(stamps):
        assert sum(1 for u in stamps[i:] if u - t < 10.0) <= 3
    assert sleeps and stamps[3] == 10.0  # the 4th request waited for the window to slide, no longer


def test_accounts_pulled_from_both_crms_are_matched_by_domain_and_the_rest_reported():
    import pandas as pd

    from healthsync.connectors.identity import match_accounts

    with Sandbox(portfolio=accounts_only(6, 8), seed=8, precreate_fields=True) as sb:
        extra = sb.create("hubspot", "companies", {"name": "Only in HubSpot", "domain": "www.solo.example.org"})
        sf = pd.concat([p.records for p in SalesforceSide().connect(sb).pull("accounts")])
        hs = pd.concat([p.records for p in HubSpotSide().connect(sb).pull("accounts")])
        pairs, report = match_accounts(sf, hs, "domain")
        assert len(pairs) == 6 and set(pairs["salesforce_id"]) == set(sf["account_id"])
        by_name = dict(zip(sf["account_id"], sf["name"]))
        hs_names = dict(zip(hs["account_id"], hs["name"]))
        assert all(by_name[s] == hs_names[h] for s, h in zip(pairs["salesforce_id"], pairs["hubspot_id"]))
        assert report.unmatched_hubspot == [f"hs:{extra}"] and not report.unmatched_salesforce


def test_a_mapped_field_missing_in_the_crm_is_reported_and_the_pull_goes_on(crm, small_sandbox):
    import copy

    mapping = copy.deepcopy(MAPPING[crm.api])
    mapping["account"]["read"]["nps"] = "Nps_Gone__c" if crm.api == "salesforce" else "nps_gone"
    build = salesforce_from_ready if crm.api == "salesforce" else hubspot_from_ready
    conn = build(small_sandbox.ready, mapping, retry=FAST)
    pages = list(conn.pull("accounts"))
    assert any("nps" in p and ("Nps_Gone__c" in p or "nps_gone" in p) for p in pages[0].problems)
    assert sum(len(p.records) for p in pages) == len(crm.ids(small_sandbox)) and pages[0].records["nps"].isna().all()


def test_no_secret_in_debug_logs_of_a_full_round_trip(small_sandbox, caplog):
    from healthsync.connectors.slack import slack_from_ready

    caplog.set_level("DEBUG")
    sb = small_sandbox
    for side in (SalesforceSide(), HubSpotSide()):
        conn = side.connect(sb)
        list(conn.pull("accounts"))
        conn.push("accounts", [Change(f"{side.prefix}:{i}", {side.score_field: 50}) for i in side.ids(sb)[:3]])
        conn.create_tasks([TaskSpec(f"logs:{side.api}", f"{side.prefix}:{side.ids(sb)[0]}", None, "s", "d", datetime(2026, 12, 3))])
    slack_from_ready(sb.ready, retry=FAST).post(channel="general", text="hello")
    secrets = [sb.ready["salesforce"]["access_token"], sb.ready["salesforce"]["password"], sb.ready["hubspot"]["access_token"], sb.ready["slack"]["token"]]
    secrets += list(sb.salesforce.sessions)  # every token issued by re-logins too
    assert caplog.records  # DEBUG logging was on and the SDKs did log
    assert not any(s in caplog.text for s in secrets)


def test_a_multi_page_full_pull_only_stores_a_cursor_that_cannot_skip_records(crm, big_sandbox):
    pages = list(crm.connect(big_sandbox).pull("accounts"))
    ids = [i for p in pages for i in p.records["account_id"]]
    assert len(pages) >= 2 and len(ids) == len(set(ids)) == len(crm.ids(big_sandbox))
    cursors = [p.cursor for p in pages]
    assert cursors[-1] is not None
    if crm.api == "salesforce":  # ordered by SystemModstamp: every page's high-water mark is safe to store
        assert all(c is not None for c in cursors) and cursors == sorted(cursors)
    else:  # list paging is unordered: only the last page carries the cursor
        assert all(c is None for c in cursors[:-1])


def test_an_incremental_pull_of_opportunities_keeps_their_account(crm):
    obj, change = ("Opportunity", {"Name": "Changed deal"}) if crm.api == "salesforce" else ("deals", {"dealname": "Changed deal"})
    with Sandbox(accounts=4, seed=3, precreate_fields=True) as sb:
        sb.advance_clock(3600)
        rid = crm.ids(sb, obj)[0]
        sb.modify(crm.api, obj, rid, change)
        sb.advance_clock(sb.hubspot.search_lag_seconds)  # past HubSpot's search index lag
        pages = list(crm.connect(sb).pull("opportunities", datetime.now(timezone.utc) + timedelta(minutes=30)))
        rows = [r for p in pages for r in p.records.to_dict("records")]
        raw = sb.record(crm.api, obj, rid)
        account = raw["AccountId"] if crm.api == "salesforce" else raw["associations"]["companies"][0]
        assert [(r["opportunity_id"], r["account_id"], r["name"]) for r in rows] == [(f"{crm.prefix}:{rid}", f"{crm.prefix}:{account}", "Changed deal")]
