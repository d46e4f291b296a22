"""The forecast's renormalisation scale is kept between runs (issue 14 hysteresis): a few changed accounts rewrite
only their own deals in the CRM, never every open deal for a scale moving by one 2% step."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select

from healthsync.sync.run import run_cycle
from healthsync.sync.score_job import score_replica
from healthsync.sync.state import pushed

from e2e_helpers import crm_values


def _turn_red(sb, crm, rid):
    if crm == "salesforce":
        sb.modify("salesforce", "Account", rid[3:], {"QBRs_Missed__c": 3, "CSM_Sentiment__c": "Red", "Logins_Per_User_Week__c": 0.1})
    else:
        sb.modify("hubspot", "companies", rid[3:], {"qbrs_missed": "3", "csm_sentiment": "red", "logins_per_user_week": "0.1"})


def test_given_a_stored_scale_when_accounts_change_enough_to_move_a_fresh_scale_then_only_their_deals_are_rewritten(
        make_sandbox, settings, store_of):
    assert settings.forecast.renormalise  # the default
    sb = make_sandbox(accounts=150, seed=11)
    first = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert first.status == "ok", first.errors
    store = store_of(settings)
    scale = store.forecast_scale()
    assert scale is not None and scale > 0  # the scale the first write-back used

    # accounts turn Red, a few at a time, until a scale fitted afresh would move by a step (the dry run pulls them)
    ids = [(crm, rid) for crm in ("salesforce", "hubspot") for rid in sorted(crm_values(sb, crm, "accounts"))]
    changed: set[str] = set()
    for crm, rid in ids[::7][:30]:  # one account per step, spread over both CRMs
        _turn_red(sb, crm, rid)
        changed.add(rid)
        sb.advance_clock(sb.hubspot.search_lag_seconds)
        assert run_cycle(settings, ready=sb.ready, dry_run=True, json_mode=True).status == "ok"
        store.set_forecast_scale(None, "probe", datetime.now(timezone.utc))
        fresh = score_replica(store, settings, ["salesforce", "hubspot"], datetime.now(timezone.utc)).forecast_scale
        store.set_forecast_scale(scale, first.run_id, datetime.now(timezone.utc))
        if fresh != scale:
            break
    assert fresh != scale, "precondition: the changes move a freshly fitted scale"

    second = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert second.status == "ok", second.errors
    assert store.forecast_scale() == scale  # the book stays within 2% of its total with it: kept
    opp_accounts = {f"sf:{o['Id']}": {f"sf:{o['AccountId']}"} for o in sb.records("salesforce", "Opportunity")}
    opp_accounts.update({f"hs:{d['id']}": {f"hs:{c}" for c in d["associations"].get("companies", [])}
                         for d in sb.records("hubspot", "deals")})
    with store.engine.connect() as conn:
        written = {rid for obj, rid in conn.execute(select(pushed.c.object, pushed.c.record_id)
                                                    .where(pushed.c.run_id == second.run_id)) if obj == "opportunities"}
    assert written, "the changed accounts' open deals move"
    assert {rid for rid in written if not opp_accounts[rid] & changed} == set()
