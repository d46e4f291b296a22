"""A lost or moved state database never duplicates a playbook task, nor its Slack alert (issue 13 item 1).

The console script runs as a user runs it, against a sandbox whose HubSpot search lags
2 s behind writes. Between the two runs the emulated clock moves a day, the state file
is deleted and the command is started from another working directory. The checks read
the emulators' own state (`GET /state/{api}/{object}` of the inspection endpoint) and the
item keys in the metadata of every Slack message received.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import requests
import yaml

from healthsync.connectors.sandbox import Sandbox

BIN = Path(sys.executable).with_name("healthsync")


def run(cwd: Path, config: Path, ready: Path) -> dict:
    env = {"PATH": str(BIN.parent), "HOME": str(cwd)}
    done = subprocess.run([str(BIN), "run", "--config", str(config), "--sandbox", str(ready), "--json"],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    return json.loads(done.stdout)


def open_tasks(inspect_url: str) -> Counter:
    """(crm, account, playbook) -> open healthsync tasks in the emulated CRMs."""
    out: Counter = Counter()
    for t in requests.get(f"{inspect_url}/state/salesforce/Task", timeout=30).json():
        key = t.get("Healthsync_Key__c")
        if key and not t.get("IsDeleted") and t.get("Status") != "Completed":
            out[("salesforce", key.split(":", 1)[1].rsplit(":", 1)[0], key.split(":")[0])] += 1
    for t in requests.get(f"{inspect_url}/state/hubspot/tasks", timeout=30).json():
        key = t["properties"].get("healthsync_key")
        if key and not t.get("archived") and t["properties"].get("hs_task_status") != "COMPLETED":
            out[("hubspot", key.split(":", 1)[1].rsplit(":", 1)[0], key.split(":")[0])] += 1
    return out


def test_given_the_state_file_deleted_and_another_working_directory_on_the_next_day_then_no_task_is_duplicated(tmp_path):
    config_dir, first_dir, second_dir = (tmp_path / d for d in ("config", "here", "there"))
    for d in (config_dir, first_dir, second_dir):
        d.mkdir()
    state = config_dir / "state.db"
    config = config_dir / "healthsync.yaml"
    config.write_text(yaml.safe_dump({"state": {"url": f"sqlite:///{state}"}}))
    # an internal app (Tier 3 history reads): the state-loss run reads DM histories without the
    # non-Marketplace one-a-minute wait, which tests/sync/test_escalation_delivery.py exercises
    with Sandbox(accounts=30, seed=5, search_lag_seconds=2, slack_message_interval_s=0, slack_app_type="internal") as sb:
        ready = tmp_path / "ready.json"
        ready.write_text(json.dumps(sb.ready))
        inspect = sb.ready["inspect_url"]

        day1 = run(first_dir, config, ready)
        assert day1["status"] == "ok", day1["errors"]
        first = open_tasks(inspect)
        assert day1["tasks_created"] == sum(first.values()) > 0
        assert max(first.values()) == 1
        # alerts_sent counts Slack messages (digests are one each), alert_episodes the episodes they carry
        alerts = [m for m in sb.slack_messages() if ((m.get("metadata") or {}).get("event_payload") or {}).get("items")]
        assert day1["alerts_sent"] == len(alerts) < day1["alert_episodes"] == day1["tasks_created"]

        sb.advance_clock(24 * 3600)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{state}{suffix}").unlink(missing_ok=True)
        day2 = run(second_dir, config, ready)

        assert day2["status"] == "ok", day2["errors"]
        second = open_tasks(inspect)
        assert max(second.values()) == 1, {k: n for k, n in second.items() if n > 1}  # 0 duplicate tasks
        assert day2["tasks_adopted"] > 0  # the open tasks of day 1 were taken over, not made again
        assert set(first) <= set(second)
        # and no Slack item (episode, level, kind) reached the same conversation twice
        items = Counter((m["channel"], k) for m in sb.slack_messages()
                        for k in str(((m.get("metadata") or {}).get("event_payload") or {}).get("items", "")).split())
        assert items and max(items.values()) == 1, [k for k, n in items.items() if n > 1][:5]
