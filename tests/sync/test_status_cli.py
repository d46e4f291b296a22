"""`healthsync status`: a table for people, the same data as one JSON object with `--json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from healthsync.sync.state import open_store

BIN = Path(sys.executable).with_name("healthsync")


def _status(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env.update({"HEALTHSYNC__STATE__URL": f"sqlite:///{tmp_path / 'state.db'}", "COLUMNS": "200"})
    return subprocess.run([str(BIN), "status", *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


@pytest.fixture
def two_runs(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    for run_id, day, written, status in (("20261201T060000Z-aaaaaa", 1, 2514, "ok"),
                                          ("20261202T060000Z-bbbbbb", 2, 35, "record_errors")):
        store.start_run(run_id, "sandbox", datetime(2026, 12, day, 6, tzinfo=timezone.utc))
        summary = {"accounts_scored": 1000, "writes": {"salesforce": {"records_changed": written, "by_object": {}}},
                   "tasks_created": 7, "alerts_sent": 7, "escalations": 0, "duration_s": 12.0,
                   "errors": ["hubspot accounts hs:1: invalid (X): [bold]not markup[/bold]"] if status != "ok" else []}
        store.finish_run(run_id, status, summary, 0 if status == "ok" else 1,
                         finished_at=datetime(2026, 12, day, 6, 1, tzinfo=timezone.utc))
    store.close()
    return tmp_path


def test_given_two_runs_when_status_is_asked_then_a_table_lists_them_newest_first(two_runs):
    done = _status(two_runs)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "recent runs" in out and out.index("20261202T060000Z-bbbbbb") < out.index("20261201T060000Z-aaaaaa")
    assert "record_errors" in out and "2,514" in out and "12 s" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_given_two_runs_when_status_is_asked_with_json_then_one_json_object_carries_them(two_runs):
    done = _status(two_runs, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [r["run_id"] for r in data["runs"]] == ["20261202T060000Z-bbbbbb", "20261201T060000Z-aaaaaa"]
    assert data["runs"][0]["errors"] == 1 and data["runs"][1]["duration_s"] == 12.0
