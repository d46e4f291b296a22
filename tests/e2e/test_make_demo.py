"""`make demo` twice in a fresh clone: the second run, a day later, writes only what changed.

Runs the Makefile's own targets in a `git clone` of this repository. To stay quick it reuses the
suite's virtualenv (`VENV=...`, and `make -o .../.installed-dev` so nothing is reinstalled into
it); the state and the sandbox world go to a temporary per-user state directory (`XDG_STATE_HOME`),
as they would for a new user. The sandbox has the demo's own size: in a much smaller book, a few
changed accounts move the forecast's pipeline-wide renormalisation scale by a step, which rewrites
every open deal.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
ACCOUNTS = 500  # config/default.yaml sandbox.accounts
CHANGES_PER_CRM = 5


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env.update({"XDG_STATE_HOME": str(tmp_path / "state-home"), "COLUMNS": "200"})
    return env


def _make(clone: Path, target: str, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(["make", "-C", str(clone), f"VENV={VENV}", "-o", f"{VENV}/.installed-dev", target],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def _status(env: dict, cwd: Path) -> dict:
    done = subprocess.run([str(VENV / "bin" / "healthsync"), "status", "--json"], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _changed_accounts(state_file: str, first: str, second: str) -> set[str]:
    """Accounts whose score, band, trend, drivers or confidence differ between the two runs' history."""
    engine = create_engine(f"sqlite:///{state_file}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "select a.account_id from score_history a join score_history b on a.account_id = b.account_id "
                "where a.run_id = :first and b.run_id = :second and (round(a.score, 1) != round(b.score, 1) "
                "or a.band != b.band or coalesce(a.trend, '') != coalesce(b.trend, '') "
                "or coalesce(a.drivers, '') != coalesce(b.drivers, '') "
                "or round(coalesce(a.confidence, 0), 2) != round(coalesce(b.confidence, 0), 2))"),
                {"first": first, "second": second}).scalars().all()
            written = conn.execute(text(
                "select distinct record_id from pushed where run_id = :second and object = 'accounts'"),
                {"second": second}).scalars().all()
    finally:
        engine.dispose()
    return set(rows), set(written)


@pytest.mark.slow
def test_given_a_fresh_clone_when_make_demo_runs_twice_then_the_second_writes_only_the_changed_accounts_and_status_lists_both(
    tmp_path,
):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=300)
    env = _env(tmp_path)

    first_out = _make(clone, "demo", env).stdout
    first = _status(env, clone)
    assert [r["status"] for r in first["runs"]] == ["ok"]
    first_run = first["runs"][0]
    first_written = {crm: w["records_changed"] for crm, w in first_run["writes"].items()}
    assert first_written["salesforce"] > ACCOUNTS and first_written["hubspot"] > ACCOUNTS
    assert "demo day 1" in first_out
    report = clone / ".healthsync" / "demo-report.html"
    assert report.exists() and f"report written: {report.relative_to(clone)}" in " ".join(first_out.split())
    assert "HEALTHSYNC__HUBSPOT__ACCESS_TOKEN" in first_out  # how to point it at a real CRM

    second_out = _make(clone, "demo", env).stdout
    status = _status(env, clone)
    runs = status["runs"]
    assert [r["status"] for r in runs] == ["ok", "ok"]
    second_run = runs[0]
    assert runs[1]["run_id"] == first_run["run_id"]
    # the summary says what changed in the sandbox, and status (the table) lists both runs
    assert re.search(rf"demo day 2, one emulated day after the last run: {2 * CHANGES_PER_CRM} accounts changed", second_out)
    table = second_out[second_out.rindex("recent runs"):]
    assert first_run["run_id"] in table and second_run["run_id"] in table

    written = {crm: w["records_changed"] for crm, w in second_run["writes"].items()}
    accounts_written = {crm: w["by_object"].get("accounts", 0) for crm, w in second_run["writes"].items()}
    for crm in ("salesforce", "hubspot"):
        # the accounts changed in the sandbox, plus the few whose 30-day ticket window moved with the day
        assert 1 <= accounts_written[crm] <= CHANGES_PER_CRM + ACCOUNTS // 10, (crm, accounts_written)
        assert written[crm] < first_written[crm], (crm, written, first_written)
    assert second_run["tasks_created"] < first_run["tasks_created"]

    state_file = status["state"] if status.get("state") else str(tmp_path / "state-home" / "healthsync" / "state.db")
    changed, pushed = _changed_accounts(state_file, first_run["run_id"], second_run["run_id"])
    assert pushed and pushed <= changed  # an account is written only when what healthsync writes of it changed

    # demo data dated relative to today: no input looks dead (a stale demo's tickets fell out of every window)
    engine = create_engine(f"sqlite:///{state_file}")
    try:
        with engine.connect() as conn:
            summaries = conn.execute(text("select summary_json from runs")).scalars().all()
    finally:
        engine.dispose()
    assert [json.loads(s)["drift_warnings"] for s in summaries] == [[], []]
