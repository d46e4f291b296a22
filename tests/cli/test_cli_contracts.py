"""The public command line, run as a user runs it: the console script in a subprocess.

One `healthsync sandbox serve` process serves the whole module; every other
command talks to it through `--sandbox READY_FILE`, with the official clients
over real HTTP. Asserts the contracts other tools rely on: JSON keys, exit
codes, and what ends up in the emulated CRMs.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

BIN = Path(sys.executable).with_name("healthsync")
ROOT = Path(__file__).resolve().parents[2]


def clean_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env["HEALTHSYNC__STATE__URL"] = f"sqlite:///{tmp_path}/state.db"
    env.update(extra)
    return env


def healthsync(*args, env, timeout=300):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    ready = tmp / "ready.json"
    env = clean_env(tmp)
    proc = subprocess.Popen(
        [str(BIN), "sandbox", "serve", "--accounts", "25", "--seed", "11", "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.time() + 90
        while not ready.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert ready.exists(), f"sandbox did not start: {proc.stderr.read() if proc.poll() is not None else 'timeout'}"
        time.sleep(0.2)  # the file is written atomically, but give the writer a moment to close it
        yield {"ready": ready, "data": json.loads(ready.read_text()), "tmp": tmp}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_ready_file_has_the_contract_keys_and_binds_loopback_only(served):
    d = served["data"]
    assert set(d["salesforce"]) >= {"instance_url", "access_token", "ca_file", "username", "password", "consumer_key"}
    assert set(d["hubspot"]) >= {"host", "access_token"} and set(d["slack"]) >= {"base_url", "token"}
    for url in (d["salesforce"]["instance_url"], d["hubspot"]["host"], d["slack"]["base_url"], d["inspect_url"]):
        assert "127.0.0.1" in url


def test_crm_setup_check_pull_and_run_through_the_command_line(served, tmp_path):
    ready, inspect = str(served["ready"]), served["data"]["inspect_url"]
    env = clean_env(tmp_path)

    r = healthsync("crm", "check", "--sandbox", ready, "--json", env=env)
    assert r.returncode == 2, r.stderr  # fields are not there yet: check names them
    problems = json.loads(r.stdout)
    assert any("Health_Score__c" in p for p in problems["salesforce"]["problems"])
    assert any("health_score" in p for p in problems["hubspot"]["problems"])

    r = healthsync("crm", "setup", "--sandbox", ready, "--json", env=env)
    assert r.returncode == 0, r.stderr
    r = healthsync("crm", "setup", "--sandbox", ready, "--json", env=env)  # idempotent
    assert r.returncode == 0, r.stderr
    r = healthsync("crm", "check", "--sandbox", ready, "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["salesforce"]["ok"] is True

    r = healthsync("pull", "--sandbox", ready, "--json", env=env)
    assert r.returncode == 0, r.stderr
    pulled = json.loads(r.stdout)
    text = json.dumps(pulled)
    assert "salesforce" in text and "hubspot" in text and "accounts" in text

    r = healthsync("run", "--sandbox", ready, "--json", env=env)
    assert r.returncode in (0, 1), r.stderr
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, "--json prints exactly one object on stdout"
    summary = json.loads(lines[0])
    for key in ("run_id", "mode", "accounts_scored", "bands", "writes", "tasks_created", "alerts_sent",
                "escalations", "errors", "duration_s"):
        assert key in summary, key
    assert summary["mode"] == "sandbox" and summary["accounts_scored"] == 50  # 25 per CRM
    assert sum(summary["bands"].values()) == 50
    for crm in ("salesforce", "hubspot"):
        assert set(summary["writes"][crm]) >= {"records_changed", "api_calls", "failed"}
    accounts = requests.get(f"{inspect}/state/salesforce/Account", timeout=10).json()
    assert accounts and all(a.get("Health_Score__c") is not None and a.get("Health_Band__c") for a in accounts)

    r = healthsync("status", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert summary["run_id"] in r.stdout


def test_a_bad_ready_file_is_a_configuration_error_not_a_traceback(tmp_path):
    bad = tmp_path / "ready.json"
    bad.write_text("{not json")
    r = healthsync("pull", "--sandbox", str(bad), env=clean_env(tmp_path))
    assert r.returncode == 2
    assert "ready file" in r.stderr and "Traceback" not in r.stderr


def test_offline_score_of_the_fixture_portfolio(tmp_path):
    out = tmp_path / "scored.csv"
    r = healthsync("score", "--input", str(ROOT / "fixtures" / "portfolio"), "--output", str(out),
                   "--as-of", "2026-11-01", "--json", env=clean_env(tmp_path))
    assert r.returncode in (0, 1), r.stderr
    result = json.loads(r.stdout)
    scored = pd.read_csv(out)
    expected = pd.read_csv(ROOT / "fixtures" / "portfolio" / "expected_scores.csv")
    assert result["accounts_scored"] == len(scored) == len(expected)
    merged = expected.merge(scored, on="account_id", suffixes=("_expected", ""))
    score_col = "expected_score" if "expected_score" in expected.columns else "score_expected"
    assert (merged[score_col].round(1) == merged["score"].round(1)).all(), merged[["account_id", score_col, "score"]]


def test_offline_score_reports_bad_records_and_exits_1(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    accounts = pd.read_csv(ROOT / "fixtures" / "portfolio" / "accounts.csv")
    accounts.loc[0, "seats_purchased"] = -10  # a column the default model reads (score --input reads no other)
    bad = accounts.iloc[[1]].copy()
    accounts = pd.concat([accounts, bad])  # a duplicate id
    accounts.to_csv(src / "accounts.csv", index=False)
    r = healthsync("score", "--input", str(src), "--output", str(tmp_path / "o.parquet"), "--json", env=clean_env(tmp_path))
    assert r.returncode == 1
    problems = json.loads(r.stdout)["problems"]
    assert any("duplicate id" in p for p in problems) and any("below the minimum" in p for p in problems)
    assert len(pd.read_parquet(tmp_path / "o.parquet")) == len(accounts) - 2


def test_backtest_json_contract_on_generated_history(tmp_path):
    hist = tmp_path / "hist"
    r = healthsync("demo-data", "--out", str(hist), "--accounts", "1500", "--history", env=clean_env(tmp_path))
    assert r.returncode == 0, r.stderr
    r = healthsync("backtest", "--history", str(hist), "--json", env=clean_env(tmp_path))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for key in ("auc", "pr_auc", "brier", "accuracy", "precision", "recall", "f1"):
        assert isinstance(report[key], float), key
    # uncalibrated, health only moves probability between deals: the book (hence MAPE) stays put (issue 11)
    assert abs(report["forecast"]["book_change"]) <= 0.02
    assert report["forecast"]["mape_after"] == pytest.approx(report["forecast"]["mape_before"], rel=0.02)
    assert isinstance(report["at_risk_share"], float) and isinstance(report["warnings"], list)
    assert report["auc"] >= 0.75
