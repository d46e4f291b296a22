"""The main job end to end against the sandbox: first run, idempotent rerun, 7 changed accounts, dry-run parity, deletions."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from healthsync.sync.run import run_cycle
from healthsync.sync.state import episodes, pushed

from e2e_helpers import assert_crm_matches_pushed, assert_no_duplicate_messages, assert_no_duplicate_tasks, crm_values, field_writes, slack_posts, task_creates, writes

CONTRACT_KEYS = {"run_id", "mode", "accounts_scored", "bands", "writes", "tasks_created", "alerts_sent", "escalations", "errors", "duration_s"}
ACCOUNT_FIELDS = {
    "salesforce": ("Health_Score__c", "Health_Band__c", "Health_Trend__c", "Health_Drivers__c"),
    "hubspot": ("health_score", "health_band", "health_trend", "health_drivers"),
}
OPP_FIELDS = {
    "salesforce": ("Health_Adjusted_Probability__c", "Health_Expected_ARR__c", "Amount"),
    "hubspot": ("health_adjusted_probability", "health_expected_arr", "amount"),
}


def _open_opportunities(sb, crm):
    if crm == "salesforce":
        return {f"sf:{o['Id']}": o for o in sb.records("salesforce", "Opportunity") if not o["IsDeleted"] and not o["IsClosed"]}
    return {
        f"hs:{d['id']}": d["properties"]
        for d in sb.records("hubspot", "deals")
        if not d["archived"] and str(d["properties"].get("hs_is_closed", "false")).lower() != "true"
    }


def _pushed_in_run(store, run_id):
    with store.engine.connect() as conn:
        rows = conn.execute(select(pushed.c.crm, pushed.c.record_id, pushed.c.field, pushed.c.value_json).where(pushed.c.run_id == run_id)).all()
    out: dict[str, dict] = {}
    for crm, rid, field, value in rows:
        out.setdefault(rid, {})[field] = json.loads(value)
    return out


def test_main_job_first_run_rerun_changes_and_dry_run_parity(make_sandbox, settings, store_of):
    # The seed's absolute multipliers: with the default renormalisation (issue 11) a change in some accounts may
    # move the book's scale, and with it every open deal's adjusted probability, which this test rules out.
    settings.forecast.renormalise = False
    sb = make_sandbox(accounts=40, seed=11)

    # ---- first run: every account and open opportunity carries its healthsync fields
    first = run_cycle(settings, ready=sb.ready, json_mode=True)
    body = first.to_json()
    assert CONTRACT_KEYS <= set(body), CONTRACT_KEYS - set(body)
    assert json.loads(json.dumps(body)) == body  # JSON-safe
    assert first.status == "ok", body["errors"]
    assert first.exit_code == 0 and body["mode"] == "sandbox"
    assert body["accounts_scored"] == 80 and sum(body["bands"].values()) == 80
    for crm in ("salesforce", "hubspot"):
        accounts = crm_values(sb, crm, "accounts")
        assert len(accounts) == 40
        for rid, rec in accounts.items():
            for f in ACCOUNT_FIELDS[crm]:
                assert rec.get(f) not in (None, ""), f"{crm} {rid} has no {f}"
        opps = _open_opportunities(sb, crm)
        assert opps
        for rid, rec in opps.items():
            adj, exp, amount = (rec.get(f) for f in OPP_FIELDS[crm])
            assert adj not in (None, "") and exp not in (None, ""), f"{crm} {rid} lacks adjusted probability / expected ARR"
            assert 0 <= float(adj) <= 1  # a fraction, not Salesforce's percent
            # expected ARR = amount x adjusted probability (the probability written is rounded to 4 places)
            assert abs(float(exp) - float(amount) * float(adj)) <= 0.01 + float(amount) * 0.00005
        assert body["writes"][crm]["records_changed"] == 40 + len(opps)
        assert body["writes"][crm]["failed"] == 0 and body["writes"][crm]["api_calls"] >= 1

    store = store_of(settings)
    with store.engine.connect() as conn:
        open_eps = conn.execute(select(episodes.c.task_key, episodes.c.task_id).where(episodes.c.status == "open")).all()
    tasks = assert_no_duplicate_tasks(sb)
    assert open_eps and body["tasks_created"] == len(open_eps) == len(tasks)
    assert {k for _, k in tasks} == {e.task_key for e in open_eps}
    # alerts_sent counts alert messages (a digest is one), alert_episodes the episodes they carry; the
    # playbook messages are the ones listing items in their metadata (not the data-quality ops post)
    alerts = [m for m in sb.slack_messages() if ((m.get("metadata") or {}).get("event_payload") or {}).get("items")]
    assert 1 <= len(alerts) == body["alerts_sent"] <= body["alert_episodes"] == len(open_eps)
    assert_no_duplicate_messages(sb, store)
    assert_crm_matches_pushed(sb, store)

    # ---- second run, nothing changed: no write, no task, no message
    seq = sb.requests()["last_seq"]
    second = run_cycle(settings, ready=sb.ready, json_mode=True)
    reqs = sb.requests(since=seq)["requests"]
    assert second.status == "ok", second.errors
    assert writes(reqs) == []
    assert second.tasks_created == 0 and second.alerts_sent == 0
    assert all(w["records_changed"] == 0 and w["api_calls"] == 0 for w in second.writes.values())

    # ---- 7 accounts change in the CRMs: the dry run shows them, the real run writes exactly that
    sf_ids = sorted(crm_values(sb, "salesforce", "accounts"))[:4]
    hs_ids = sorted(crm_values(sb, "hubspot", "accounts"))[:3]
    for rid in sf_ids:
        rec = sb.record("salesforce", "Account", rid[3:])
        sb.modify("salesforce", "Account", rid[3:], {"QBRs_Missed__c": 3 if (rec.get("QBRs_Missed__c") or 0) < 2 else 0,
                                                      "CSM_Sentiment__c": "Red" if rec.get("CSM_Sentiment__c") != "Red" else "Green"})
    for rid in hs_ids:
        props = sb.record("hubspot", "companies", rid[3:])["properties"]
        sb.modify("hubspot", "companies", rid[3:], {"qbrs_missed": "3" if int(float(props.get("qbrs_missed") or 0)) < 2 else "0",
                                                     "csm_sentiment": "red" if props.get("csm_sentiment") != "red" else "green"})
    changed = set(sf_ids) | set(hs_ids)
    sb.advance_clock(sb.hubspot.search_lag_seconds)  # HubSpot search sees the changes once indexed

    seq = sb.requests()["last_seq"]
    dry = run_cycle(settings, ready=sb.ready, dry_run=True, json_mode=True).to_json()
    assert writes(sb.requests(since=seq)["requests"]) == []  # a dry run sends nothing
    diff = dry["diff"]
    account_records = {r["record_id"] for r in diff["records"] if r["object"] == "accounts"}
    assert account_records == changed
    opp_accounts = {f"sf:{o['Id']}": {f"sf:{o['AccountId']}"} for o in sb.records("salesforce", "Opportunity")}
    opp_accounts.update({f"hs:{d['id']}": {f"hs:{c}" for c in d["associations"].get("companies", [])}
                         for d in sb.records("hubspot", "deals")})
    for r in diff["records"]:
        if r["object"] == "opportunities":
            assert opp_accounts[r["record_id"]] & changed, r  # only opportunities of changed accounts move
    assert diff["counts"]["changed"] == len(diff["records"]) and diff["counts"]["invalid"] == 0
    assert diff["counts"]["unchanged"] > 0

    seq = sb.requests()["last_seq"]
    real = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert real.status == "ok", real.errors
    written = _pushed_in_run(store, real.run_id)
    planned = {r["record_id"]: {f: c["after"] for f, c in r["fields"].items()} for r in diff["records"]}
    assert set(written) == set(planned)
    for rid, fields in planned.items():
        assert set(written[rid]) == set(fields), rid
        for f, after in fields.items():
            if f not in ("Health_Updated__c", "health_updated"):  # the run's own time
                assert written[rid][f] == after, (rid, f)
    assert sum(w["records_changed"] for w in real.writes.values()) == len(planned)
    sent = field_writes(sb.requests(since=seq)["requests"])
    assert sent and {r["api"] for r in sent} <= {"salesforce", "hubspot"}
    assert_crm_matches_pushed(sb, store)

    # ---- deleted / archived records leave the replica and are never written again
    gone_sf, gone_hs = sf_ids[0], hs_ids[0]
    sb.delete("salesforce", "Account", gone_sf[3:])
    sb.delete("hubspot", "companies", gone_hs[3:])
    sb.advance_clock(60)  # Salesforce lists a deletion once its minute is over (sobjects/{O}/deleted ignores seconds)
    third = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert third.status == "ok", third.errors
    assert third.pulled["salesforce"]["accounts"]["deleted"] == 1
    assert third.pulled["hubspot"]["accounts"]["deleted"] == 1
    assert gone_sf not in store.live_ids("salesforce", "accounts")
    assert gone_hs not in store.pushed_values("hubspot", "accounts")
    assert all(w["failed"] == 0 for w in third.writes.values())
    assert third.accounts_scored == 78
    assert_no_duplicate_tasks(sb)
    assert task_creates(sb.requests(since=seq)["requests"]) == [] or real.tasks_created + third.tasks_created > 0
    assert len(slack_posts(sb.requests()["requests"])) == len(sb.slack_messages())
