"""One error contract for every command (issue 13 item 4): exit 0 ok; 1 record errors or an internal
error; 2 configuration or credentials, nothing sent; 3 stopped (unreachable, quota, retries), state kept.
`--json` always prints its one object; network trouble is never reported as a permission problem; an
unexpected exception is one line naming a log file, never a traceback on the terminal."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from failsafe_cli import assert_no_traceback, clean_env, closed_port, healthsync, one_json, with_host, with_token


def _writes(sb, since: int) -> list[dict]:
    return [r for r in sb.requests(since=since)["requests"]
            if r["method"] in ("PATCH", "PUT", "DELETE") or (r["method"] == "POST" and not any(
                k in r["path"] for k in ("/search", "/batch/read", "oauth2/token", "lookupByEmail", "conversations.open", "/query")))]


@pytest.mark.parametrize("crm", ["hubspot", "salesforce"])
def test_given_a_wrong_token_then_run_and_pull_both_exit_2_and_nothing_is_sent(world, crm):
    sb, ready, env = world(accounts=5, seed=3)
    bad = with_token(ready, crm, "not-the-token-0000")
    seq = sb.requests()["last_seq"]
    for command in ("run", "pull"):
        r = healthsync(command, "--sandbox", bad, "--json", env=env)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert_no_traceback(r)
        out = one_json(r)
        assert out["exit_code"] == 2 and out["status"] == "failed"
        text = " ".join(out["errors"])
        assert ("token" in text or "login" in text or "credentials" in text), text
    assert _writes(sb, seq) == []


def test_given_an_unreachable_crm_then_crm_setup_check_and_pull_exit_3_naming_the_network_not_a_permission(world):
    sb, ready, env = world(accounts=3, seed=4, precreate_fields=False)
    moved = with_host(ready, "hubspot", closed_port())
    for args in (("crm", "setup"), ("crm", "check"), ("pull",)):
        r = healthsync(*args, "--sandbox", moved, "--json", env=env)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
        assert_no_traceback(r)
        out = one_json(r)
        reason = out["stopped_reason"]
        assert "HubSpot" in reason and "unreachable" in reason, reason
        assert "permission" not in reason.lower() and "scope" not in reason.lower()


def test_given_an_unreachable_crm_when_run_without_fields_then_not_blamed_on_permissions(world):
    sb, ready, env = world(accounts=3, seed=4, precreate_fields=False)
    r = healthsync("run", "--sandbox", with_host(ready, "salesforce", closed_port().replace("http", "https")), "--json", env=env)
    assert r.returncode == 3, r.stderr
    out = one_json(r)
    assert "permission" not in out["stopped_reason"].lower() and "crm setup" not in out["stopped_reason"]
    assert out["lanes"]["hubspot"]["status"] == "ok"


def test_given_a_transient_429_during_setup_then_setup_succeeds_and_no_missing_scope_is_reported(world):
    sb, ready, env = world(accounts=3, seed=4, precreate_fields=False)
    sb.set_faults({"hubspot": {"burst_429": 1, "retry_after": 0}})
    r = healthsync("crm", "setup", "--sandbox", ready, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert "scope" not in r.stdout + r.stderr
    sb.set_faults({"hubspot": {"burst_429": 100_000, "retry_after": 0}})  # a long burst: stopped, still no scope blamed
    r = healthsync("crm", "check", "--sandbox", ready, "--json", env=env)
    assert r.returncode == 3, r.stderr
    out = one_json(r)
    assert "429" in out["stopped_reason"] and "scope" not in out["stopped_reason"]


def test_given_an_unexpected_error_then_one_line_names_a_log_file_holding_the_traceback_and_exit_1(tmp_path):
    db = tmp_path / "state.db"
    env = clean_env(f"sqlite:///{db}", HEALTHSYNC_LOG_DIR=str(tmp_path / "logs"))
    assert healthsync("status", "--json", env=env).returncode == 0
    with sqlite3.connect(db) as conn:  # a state database damaged behind healthsync's back
        conn.execute("DROP TABLE episodes")
    r = healthsync("status", "--json", env=env)
    assert r.returncode == 1
    assert_no_traceback(r)
    out = one_json(r)
    assert out["status"] == "failed" and out["error_kind"] == "internal" and out["exit_code"] == 1
    log_file = Path(out["log_file"])
    assert log_file.parent == tmp_path / "logs" and "Traceback" in log_file.read_text()
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(log_file) in lines[0]  # one line; the traceback is in the file


def test_given_a_configuration_error_with_json_then_stdout_still_holds_one_object(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("schedules:\n  - {job: run, cron: '99 * * * *'}\n")
    for command in ("run", "pull", "status", "sync", "escalate"):
        r = healthsync(command, "--config", bad, "--json", env=clean_env())
        assert r.returncode == 2, (command, r.stderr)
        assert_no_traceback(r)
        out = one_json(r)
        assert out["exit_code"] == 2 and out["error_kind"] == "configuration"
        assert any("schedules.0.cron" in e for e in out["errors"])
