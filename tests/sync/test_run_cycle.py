"""run_cycle outcomes: quota stop (exit 3, state kept, resumes), live mode without fields (exit 2),
the embedded sandbox on a fresh state db, the dry-run table, status, and no secret in any output."""

from __future__ import annotations

import io
from datetime import datetime, timezone
import json

import pytest
from rich.console import Console

from healthsync.config.settings import load_settings
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.run import escalate_stage, pull_stage, retry_failed, run_cycle, score_stage, sync_stage
from healthsync.sync.state import open_store
from healthsync.sync.status import status


@pytest.fixture
def settings(tmp_path):
    s = load_settings()
    s.state.url = f"sqlite:///{tmp_path}/state.db"
    s.sources.salesforce.lookback_minutes = 0
    s.sources.hubspot.lookback_minutes = 0
    return s


def _secrets(ready: dict) -> list[str]:
    return [ready["salesforce"]["access_token"], ready["salesforce"]["password"], ready["hubspot"]["access_token"], ready["slack"]["token"]]


def test_given_the_quota_runs_out_then_the_run_stops_with_exit_3_keeps_state_and_the_next_run_resumes(settings, tmp_path):
    settings.sources.salesforce.quota_stop_share = 0.5
    with Sandbox(accounts=12, seed=2, precreate_fields=True, salesforce_daily_limit=18, slack_message_interval_s=0) as sb:
        stopped = run_cycle(settings, ready=sb.ready, json_mode=True)
        body = json.dumps(stopped.to_json())
        assert stopped.status == "stopped" and stopped.exit_code == 3
        assert "quota" in stopped.stopped_reason.lower()
        assert not any(secret in body for secret in _secrets(sb.ready))
        store = open_store(settings.state.url)
        assert store.recent_runs(1)[0]["status"] == "stopped"
        kept_cursors = store.count("cursors")
        assert kept_cursors >= 1  # what was pulled before the stop stays pulled

        sb.salesforce.daily_limit = 100_000  # a new day
        resumed = run_cycle(settings, ready=sb.ready, json_mode=True)
        assert resumed.status == "ok", resumed.errors
        accounts = [a for a in sb.records("salesforce", "Account") if not a["IsDeleted"]]
        assert all(a["Health_Score__c"] is not None for a in accounts)
        settings.report.enabled = True
        settings.report.path = str(tmp_path / "report.html")
        again = run_cycle(settings, ready=sb.ready, json_mode=True)
        assert all(w["records_changed"] == 0 for w in again.writes.values())
        assert again.report_path == settings.report.path and (tmp_path / "report.html").stat().st_size > 0

        report = status(store)
        assert [r["status"] for r in report["runs"]] == ["ok", "ok", "stopped"]
        assert report["queues"]["failed_records"] == 0
        assert report["queues"]["open_episodes"] == store.count("episodes", status="open") > 0
        store.close()


def test_given_live_credentials_and_missing_fields_then_configuration_error_and_nothing_sent(tmp_path, settings):
    with Sandbox(accounts=5, seed=3) as sb:  # fields NOT created
        env = {
            "HEALTHSYNC__SALESFORCE__ACCESS_TOKEN": sb.ready["salesforce"]["access_token"],
            "HEALTHSYNC__HUBSPOT__ACCESS_TOKEN": sb.ready["hubspot"]["access_token"],
            "HEALTHSYNC__SOURCES__SALESFORCE__AUTH": "token",
            "HEALTHSYNC__SOURCES__SALESFORCE__INSTANCE_URL": sb.ready["salesforce"]["instance_url"],
            "HEALTHSYNC__SOURCES__SALESFORCE__CA_FILE": sb.ready["salesforce"]["ca_file"],
            "HEALTHSYNC__SOURCES__HUBSPOT__HOST": sb.ready["hubspot"]["host"],
            "HEALTHSYNC__STATE__URL": settings.state.url,
        }
        live = load_settings(environ=env)
        assert live.live
        seq = sb.requests()["last_seq"]
        summary = run_cycle(live, json_mode=True)
        assert summary.mode == "live" and summary.status == "failed" and summary.exit_code == 2
        assert "healthsync crm setup" in " ".join(summary.errors)
        sent = [r for r in sb.requests(since=seq)["requests"] if r["method"] != "GET" and "oauth2" not in r["path"]]
        assert sent == []
        assert not any(s in json.dumps(summary.to_json()) for s in _secrets(sb.ready))


def test_given_no_credentials_then_the_embedded_sandbox_runs_on_the_configured_state_which_status_sees(tmp_path, settings):
    settings.sandbox.accounts = 6
    first = run_cycle(settings, json_mode=True)
    assert first.mode == "sandbox" and first.status == "ok", first.errors
    assert any("embedded sandbox" in n for n in first.notes)
    assert first.accounts_scored == 12
    state_db = tmp_path / "state.db"
    assert first.state == str(state_db) and state_db.exists()
    second = run_cycle(settings, json_mode=True)
    assert second.status == "ok"
    # the sandbox world is kept next to the state (sync/demo_world.py): the second run is demo day 2, in the
    # same world, so it writes only what changed (tests/e2e/test_make_demo.py checks that at the demo's size)
    assert (tmp_path / "sandbox-world.pickle").exists()
    assert any("demo day 2" in n for n in second.notes), second.notes
    assert sum(w["records_changed"] for w in second.writes.values()) < sum(w["records_changed"] for w in first.writes.values())
    assert second.tasks_created < first.tasks_created
    store = open_store(settings.state.url)
    # ... and the run history is kept, where `healthsync status` reads it
    assert [r["run_id"] for r in status(store)["runs"]] == [second.run_id, first.run_id]
    store.close()


def test_given_a_state_db_with_live_runs_when_no_credentials_then_the_embedded_sandbox_refuses_it(settings):
    store = open_store(settings.state.url)
    store.start_run("live-run-1", "live", datetime.now(timezone.utc))
    with store.begin() as conn:
        store.set_cursor(conn, "salesforce", "accounts", datetime(2026, 1, 1, tzinfo=timezone.utc))
    settings.sandbox.accounts = 3
    refused = run_cycle(settings, json_mode=True)
    assert refused.status == "failed" and refused.exit_code == 2
    assert "live CRMs" in " ".join(refused.errors)
    assert store.cursor("salesforce", "accounts") is not None  # the live state is untouched
    store.close()


def test_stages_and_the_dry_run_table(settings):
    with Sandbox(accounts=6, seed=5, precreate_fields=True, slack_message_interval_s=0) as sb:
        pulled = pull_stage(settings, ready=sb.ready)
        assert pulled["pulled"]["salesforce"]["accounts"]["records"] == 6 and pulled["exit_code"] == 0
        scored = score_stage(settings, ready=sb.ready)
        assert scored["accounts_scored"] == 12 and sum(scored["bands"].values()) == 12
        dry = sync_stage(settings, ready=sb.ready, dry_run=True)
        assert dry["counts"]["changed"] > 0 and dry["counts"]["invalid"] == 0
        assert sb.records("salesforce", "Account")[0]["Health_Score__c"] is None  # nothing sent

        out = io.StringIO()
        run_cycle(settings, ready=sb.ready, dry_run=True, console=Console(file=out, width=200))
        text = out.getvalue()
        assert "dry run" in text and "Health_Score__c" in text and "would change" in text

        done = sync_stage(settings, ready=sb.ready)
        assert done["status"] == "ok" and done["writes"]["salesforce"]["records_changed"] == dry["by_crm"]["salesforce"]["changed"]
        assert retry_failed(settings, ready=sb.ready)["writes"]["salesforce"]["records_changed"] == 0
        escalated = escalate_stage(settings, ready=sb.ready)  # no episode yet: nothing to say
        assert escalated["status"] == "ok" and escalated["alerts_sent"] == 0 and escalated["escalations"] == 0


def test_given_another_run_holds_the_state_lock_then_the_run_stops_without_touching_anything(settings):
    from healthsync.sync.run import RUN_LOCK

    store = open_store(settings.state.url)
    assert store.acquire_lock(RUN_LOCK, "someone-else", 600)
    with Sandbox(accounts=3, seed=1, precreate_fields=True) as sb:
        seq = sb.requests()["last_seq"]
        blocked = run_cycle(settings, ready=sb.ready, json_mode=True)
        assert blocked.status == "stopped" and blocked.exit_code == 3 and "in progress" in blocked.stopped_reason
        assert sb.requests(since=seq)["requests"] == []
        store.release_lock(RUN_LOCK, "someone-else")
        assert run_cycle(settings, ready=sb.ready, json_mode=True).status == "ok"
        assert store.acquire_lock(RUN_LOCK, "next", 600)  # the finished run released it
    store.close()


def test_given_a_record_the_crm_rejects_then_exit_1_with_its_reason_and_the_next_run_settles_it(settings):
    with Sandbox(accounts=4, seed=6, precreate_fields=True, slack_message_interval_s=0) as sb:
        victim = sorted(a["Id"] for a in sb.records("salesforce", "Account"))[0]

        def delete_after_scoring(point):  # a user deletes the account while the run is computing
            if point == "after_score":
                sb.delete("salesforce", "Account", victim)

        failed = run_cycle(settings, ready=sb.ready, json_mode=True, hooks=delete_after_scoring)
        assert failed.status == "record_errors" and failed.exit_code == 1
        assert failed.writes["salesforce"]["failed"] >= 1
        assert any(victim in e for e in failed.errors)
        store = open_store(settings.state.url)
        assert ("salesforce", "accounts", f"sf:{victim}") in store.failed_queue()
        assert status(store)["queues"]["failed_records"] >= 1

        sb.advance_clock(60)  # Salesforce lists a deletion once its minute is over (sobjects/{O}/deleted ignores seconds)
        settled = run_cycle(settings, ready=sb.ready, json_mode=True)  # the pull sees the deletion
        assert settled.status == "ok", settled.errors
        assert store.failed_queue() == {}
        store.close()
