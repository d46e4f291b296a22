"""Ctrl-C while the CRM lanes run in their threads (issue 14 item 4): the process ends with 130 and no
traceback (the lane threads stop at their next page or batch), and the next run resumes and converges."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from failsafe_cli import BIN, healthsync, one_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_helpers import assert_no_duplicate_tasks  # noqa: E402


def test_given_a_run_interrupted_while_both_lanes_pull_then_it_exits_130_without_traceback_and_the_next_run_converges(world):
    sb, ready, env = world(accounts=30, seed=9)
    sb.set_faults({"salesforce": {"latency_ms": 300}})  # Salesforce's pull is still going while HubSpot pulls
    seq = sb.requests()["last_seq"]
    # SIGINT as a terminal delivers it, also when this suite itself runs in the background of a shell
    # (whose asynchronous commands ignore SIGINT, an ignore the child would inherit)
    proc = subprocess.Popen([str(BIN), "run", "--sandbox", str(ready), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    pulling = lambda: any(r["api"] == "hubspot" and r["endpoint"].startswith("GET /crm/v3/objects")  # noqa: E731
                          for r in sb.requests(since=seq)["requests"])
    while proc.poll() is None and time.monotonic() < deadline and not pulling():
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before its pull"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert "interrupted" in err

    sb.clear_faults()
    resumed = one_json(healthsync("run", "--sandbox", ready, "--json", env=env))
    assert resumed["status"] == "ok", resumed["errors"]
    assert "in progress" not in (resumed["stopped_reason"] or "")
    again = one_json(healthsync("run", "--sandbox", ready, "--json", env=env))
    assert again["status"] == "ok" and again["tasks_created"] == 0
    assert all(w["records_changed"] == 0 for w in again["writes"].values())
    assert_no_duplicate_tasks(sb)
