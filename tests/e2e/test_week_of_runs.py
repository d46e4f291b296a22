"""A 1,500-account portal synced daily for a week of emulated time (issue 12, "Done means").

Every HubSpot object starts with all its records on ONE modification time (`same_stamp`, how
the 1,500-account portal with 14,382 tickets reproduced "more than 10000 records share the
modification time" on every run after the first), and on day 4 a workflow stamps every ticket
again at one instant. No run may stop (exit 3), and after each day every account of both CRMs
carries its latest score in the emulated CRM.
"""

from __future__ import annotations

import math

import pytest
import requests

from healthsync.sync.run import run_cycle
from healthsync.sync.state import open_store

ACCOUNTS = 1500
DAYS = 7
SCORE_FIELD = {"salesforce": ("Account", "Health_Score__c"), "hubspot": ("companies", "health_score")}


def _advance_a_day(sb) -> None:
    """The way an operator moves the sandbox on: the inspection API's clock."""
    reply = requests.post(sb.ready["inspect_url"] + "/clock", json={"advance_seconds": 86_400}, timeout=10)
    reply.raise_for_status()


def _latest_scores(store, run_id: str) -> dict[str, float]:
    frame = store.score_history_frame()
    mine = frame[frame["run_id"] == run_id]
    return dict(zip(mine["account_id"], mine["score"]))


def _crm_scores(sb, crm: str) -> dict[str, float | None]:
    obj, field = SCORE_FIELD[crm]
    if crm == "salesforce":
        return {f"sf:{r['Id']}": r.get(field) for r in sb.records(crm, obj) if not r.get("IsDeleted")}
    return {f"hs:{r['id']}": r["properties"].get(field) for r in sb.records(crm, obj) if not r.get("archived")}


def _assert_every_account_carries_its_latest_score(sb, store, run_id: str) -> None:
    latest = _latest_scores(store, run_id)
    for crm in ("salesforce", "hubspot"):
        in_crm = _crm_scores(sb, crm)
        assert len(in_crm) == ACCOUNTS
        for account, value in in_crm.items():
            expected = latest.get(account)
            assert expected is not None and not math.isnan(expected), f"{account} was not scored in run {run_id}"
            assert value not in (None, "") and float(value) == pytest.approx(round(expected, 1), abs=1e-9), (
                f"{crm} {account}: CRM holds {value!r}, the latest score is {expected}"
            )


def _user_changes(sb, day: int) -> None:
    """What CS teams do between runs: a few accounts' signals change in each CRM."""
    for r in sorted(sb.records("hubspot", "companies"), key=lambda r: int(r["id"]))[day::97]:
        sb.modify("hubspot", "companies", r["id"], {"qbrs_missed": str(day % 4), "csm_sentiment": "red" if day % 2 else "green"})
    for r in sorted(sb.records("salesforce", "Account"), key=lambda r: r["Id"])[day::97]:
        sb.modify("salesforce", "Account", r["Id"], {"QBRs_Missed__c": day % 4, "CSM_Sentiment__c": "Red" if day % 2 else "Green"})


@pytest.mark.slow
def test_given_a_1500_account_portal_when_synced_daily_for_a_week_then_no_run_stops_and_every_score_is_current(
    make_sandbox, settings
):
    sb = make_sandbox(accounts=ACCOUNTS, seed=12, same_stamp=10 * ACCOUNTS * 10)  # every record of an object: one instant
    tickets = [r["id"] for r in sb.records("hubspot", "tickets")]
    assert len(tickets) > 10_000 and len({r["properties"]["hs_lastmodifieddate"] for r in sb.records("hubspot", "tickets")}) == 1
    store = open_store(settings.state.url)
    try:
        for day in range(1, DAYS + 1):
            if day > 1:
                _user_changes(sb, day)
            if day == 4:  # a workflow touches every ticket at one instant, after the previous run
                sb.modify_many("hubspot", "tickets", tickets, {"hs_ticket_priority": "MEDIUM"})
            _advance_a_day(sb)
            summary = run_cycle(settings, ready=sb.ready, json_mode=True)
            assert summary.exit_code != 3 and summary.status != "stopped", (day, summary.errors)
            _assert_every_account_carries_its_latest_score(sb, store, summary.run_id)
            if day == 4:
                assert summary.pulled["hubspot"]["tickets"]["records"] == len(tickets)  # the whole instant, read by id
    finally:
        store.close()
