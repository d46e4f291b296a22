"""The scoring memo (sync/score_memo.py, issue 14): a second run the same day over an unchanged replica reuses the
last run's scores instead of rescoring; any change the scores depend on (a person's edit, the next day, the
configuration, a write still queued) scores afresh."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import func, select

from healthsync.sync.run import run_cycle
from healthsync.sync.state import score_history, score_memo

from e2e_helpers import assert_crm_matches_pushed, crm_values, field_writes

REUSED = "reused: nothing they depend on changed"


def _history_rows(store, run_id: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(score_history).where(score_history.c.run_id == run_id)).scalar()


def _reused(summary) -> bool:
    return any(REUSED in note for note in summary.notes)


def _same_day(first, second) -> None:
    if pd.Timestamp(first.started_at).date() != pd.Timestamp(second.started_at).date():
        pytest.skip("the two runs straddled midnight: a new day scores afresh by design")


def test_given_nothing_changed_since_a_run_that_wrote_everything_then_the_next_run_reuses_its_scores_and_writes_nothing(
        make_sandbox, settings, store_of):
    sb = make_sandbox(accounts=60, seed=5)
    first = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert first.status == "ok", first.errors
    store = store_of(settings)
    assert store.score_memo() is not None and store.score_memo()[1] == first.run_id
    seq = sb.requests()["last_seq"]

    second = run_cycle(settings, ready=sb.ready, json_mode=True)
    _same_day(first, second)
    assert second.status == "ok", second.errors
    assert _reused(second), second.notes
    assert second.accounts_scored == first.accounts_scored and second.bands == first.bands
    assert _history_rows(store, second.run_id) == 0  # a rescoring would have recorded a row per account
    assert field_writes(sb.requests(since=seq)["requests"]) == []
    assert second.tasks_created == 0 and second.episodes_opened == 0  # no crossing between identical scores
    assert_crm_matches_pushed(sb, store)


def test_given_a_persons_edit_then_the_run_scores_afresh_and_writes_the_changed_account(make_sandbox, settings, store_of):
    sb = make_sandbox(accounts=60, seed=5)
    first = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert first.status == "ok", first.errors
    store = store_of(settings)
    rid = sorted(crm_values(sb, "salesforce", "accounts"))[0]
    before = crm_values(sb, "salesforce", "accounts")[rid]["Health_Score__c"]
    sb.modify("salesforce", "Account", rid[3:], {"QBRs_Missed__c": 4, "CSM_Sentiment__c": "Red", "Logins_Per_User_Week__c": 0.0,
                                                  "NPS__c": -80})
    sb.advance_clock(1)

    second = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert second.status == "ok", second.errors
    assert not _reused(second), second.notes
    assert _history_rows(store, second.run_id) == first.accounts_scored
    assert crm_values(sb, "salesforce", "accounts")[rid]["Health_Score__c"] < before
    assert_crm_matches_pushed(sb, store)


def test_given_the_next_day_or_another_configuration_then_the_run_scores_afresh(make_sandbox, settings, store_of):
    sb = make_sandbox(accounts=40, seed=9)
    first = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert first.status == "ok", first.errors
    store = store_of(settings)

    sb.advance_clock(86400)
    next_day = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert next_day.status == "ok", next_day.errors
    assert not _reused(next_day), next_day.notes
    assert _history_rows(store, next_day.run_id) == first.accounts_scored

    same = run_cycle(settings, ready=sb.ready, json_mode=True)
    _same_day(next_day, same)
    assert _reused(same), same.notes

    settings.forecast.enabled = not settings.forecast.enabled
    changed = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert not _reused(changed), changed.notes
    assert _history_rows(store, changed.run_id) == first.accounts_scored


def test_given_a_record_left_in_the_retry_queue_then_no_memo_is_kept_and_the_next_run_plans_its_writes(
        make_sandbox, settings, store_of):
    sb = make_sandbox(accounts=40, seed=9)
    sb.set_faults(api="hubspot", lost_response_rate=1.0)  # every HubSpot write applied, its answer lost: queued
    first = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert first.status != "ok"
    store = store_of(settings)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(score_memo)).scalar() == 0
    assert store.failed_queue("hubspot")

    sb.clear_faults()
    second = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert second.status == "ok", second.errors
    assert not _reused(second), second.notes
    assert not store.failed_queue()
    assert_crm_matches_pushed(sb, store)
