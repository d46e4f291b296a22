"""Per-CRM isolation (issue 13 item 3): one CRM that is unreachable, rate limited past its retries, or out
of quota stops only its own lane; the other CRM's pull, score, write-back, tasks and alerts go on, the run
exits 3 with `stopped_reason` naming the CRM, the call and what to do, and `--json` prints its one object."""

from __future__ import annotations

from failsafe_cli import assert_no_traceback, closed_port, healthsync, one_json, scored_in, tasks_in, with_host


def test_given_hubspot_unreachable_when_run_then_salesforce_is_written_tasked_and_alerted_and_exit_3(world):
    # seed 6: Salesforce has accounts at risk on the first run (tasks open on crossings, the at-risk backlog
    # included; accounts already at 80+ get no expansion task on a first run)
    sb, ready, env = world(accounts=12, seed=6)
    r = healthsync("run", "--sandbox", with_host(ready, "hubspot", closed_port()), "--json", env=env)
    assert r.returncode == 3, r.stderr
    assert_no_traceback(r)
    summary = one_json(r)
    assert summary["status"] == "stopped" and summary["exit_code"] == 3
    reason = summary["stopped_reason"]
    assert "HubSpot" in reason and "unreachable" in reason and "next run resumes" in reason
    assert "permission" not in reason.lower() and "scope" not in reason.lower()
    assert summary["lanes"]["hubspot"]["status"] == "stopped" and summary["lanes"]["salesforce"]["status"] == "ok"
    assert summary["stopped"][0]["system"] == "hubspot" and summary["stopped"][0]["kind"] == "unreachable"
    # Salesforce went on: every account scored and written, its tasks created, its alerts sent
    assert scored_in(sb, "salesforce") == 12 and summary["writes"]["salesforce"]["records_changed"] > 0
    assert summary["tasks_created"] == len(tasks_in(sb, "salesforce")) > 0
    assert summary["alerts_sent"] > 0 and len(sb.slack_messages()) > 0
    assert scored_in(sb, "hubspot") == 0 and tasks_in(sb, "hubspot") == []


def test_given_hubspot_429_bursts_past_the_retries_when_run_then_exit_3_with_json_and_salesforce_goes_on(world):
    sb, ready, env = world(accounts=12, seed=6)
    sb.set_faults({"hubspot": {"burst_429": 100_000, "retry_after": 0}})
    r = healthsync("run", "--sandbox", ready, "--json", env=env)
    assert r.returncode == 3, r.stderr
    assert_no_traceback(r)
    summary = one_json(r)
    reason = summary["stopped_reason"]
    assert "HubSpot" in reason and "429" in reason and "retries exhausted" in reason
    assert summary["stopped"][0]["kind"] == "retries_exhausted"
    assert scored_in(sb, "salesforce") == 12 and len(tasks_in(sb, "salesforce")) == summary["tasks_created"] > 0
    assert summary["alerts_sent"] > 0 and len(sb.slack_messages()) > 0  # digests: one message may alert several

    sf_tasks = len(tasks_in(sb, "salesforce"))
    sb.clear_faults()  # the burst is over: the next run finishes HubSpot; Salesforce gets nothing twice
    again = one_json(healthsync("run", "--sandbox", ready, "--json", env=env))
    assert again["status"] in ("ok", "record_errors") and again["lanes"]["hubspot"]["status"] == "ok"
    assert scored_in(sb, "hubspot") == 12 and len(tasks_in(sb, "hubspot")) > 0
    assert len(tasks_in(sb, "salesforce")) == sf_tasks


def test_given_hubspot_daily_quota_spent_every_day_then_salesforce_tasks_and_alerts_still_go_out(world):
    sb, ready, env = world(accounts=12, seed=7, hubspot_daily_limit=5)
    alerts_before = 0
    for day in range(3):
        r = healthsync("run", "--sandbox", ready, "--json", env=env)
        assert r.returncode == 3, r.stderr
        summary = one_json(r)
        assert "HubSpot" in summary["stopped_reason"] and summary["stopped"][0]["kind"] == "quota"
        assert summary["lanes"]["salesforce"]["status"] == "ok"
        assert "tasks" in summary["lanes"]["salesforce"]["stages"]
        if day == 0:
            assert summary["tasks_created"] == len(tasks_in(sb, "salesforce")) > 0
            assert summary["alerts_sent"] > 0
        assert len(sb.slack_messages()) >= alerts_before
        alerts_before = len(sb.slack_messages())
        sb.advance_clock(86_400)  # a new emulated day: the quota resets, and is spent again at once
    assert scored_in(sb, "salesforce") == 12 and alerts_before > 0


def test_given_salesforce_unreachable_when_pulling_then_hubspot_is_pulled_and_exit_3_not_a_traceback(world):
    sb, ready, env = world(accounts=8, seed=8)
    r = healthsync("pull", "--sandbox", with_host(ready, "salesforce", closed_port().replace("http", "https")), "--json", env=env)
    assert r.returncode == 3, r.stderr
    assert_no_traceback(r)
    out = one_json(r)
    assert out["status"] == "stopped" and "Salesforce" in out["stopped_reason"] and "unreachable" in out["stopped_reason"]
    assert out["pulled"]["hubspot"]["accounts"]["records"] == 8 and "salesforce" not in out["pulled"]
