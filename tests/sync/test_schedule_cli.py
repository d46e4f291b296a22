"""`healthsync schedule` as a user runs it: next run times, one log line per change of state, a quiet stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

BIN = Path(sys.executable).with_name("healthsync")


def _start(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    config = tmp_path / "schedule.yaml"
    config.write_text('schedules:\n  - {job: run, cron: "0 6 * * *"}\n  - {job: escalate, interval_minutes: 0.05}\n')
    state = f"sqlite:///{tmp_path / 'state.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env.update({"HEALTHSYNC__STATE__URL": state, "XDG_STATE_HOME": str(tmp_path / "xdg")})
    proc = subprocess.Popen([str(BIN), "schedule", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    return proc, state


def _failures_recorded(state: str, job: str) -> int:
    engine = create_engine(state)
    try:
        with engine.connect() as conn:
            return conn.execute(text("select count(*) from runs where mode = :m and status = 'failed'"),
                                {"m": f"schedule:{job}"}).scalar() or 0
    except Exception:  # noqa: BLE001 - the table may not exist yet
        return 0
    finally:
        engine.dispose()


def _wait_for_failures(proc: subprocess.Popen, state: str, count: int) -> None:
    deadline = time.monotonic() + 120
    while _failures_recorded(state, "escalate") < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the escalate job did not fire often enough"
        time.sleep(0.5)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_given_a_job_failing_for_its_configuration_when_it_fires_again_and_again_then_one_line_no_traceback_and_a_quiet_stop(
    tmp_path, sig, code
):
    proc, state = _start(tmp_path)
    try:
        _wait_for_failures(proc, state, 3)  # without credentials, every escalate fails for its configuration
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    stamp = r"next run \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC"
    assert re.search(rf"scheduled run: cron '0 6 \* \* \*' UTC; next run \d{{4}}-\d{{2}}-\d{{2}} 06:00:00 UTC", out), out
    assert re.search(rf"scheduled escalate: every 0.05 min; {stamp}", out), out
    assert "stopped" in out
    assert "Traceback" not in err and "Traceback" not in out
    failures = [line for line in err.splitlines() if "job escalate failed" in line]
    assert len(failures) == 1, err
    assert "configuration error: no CRM credentials configured" in failures[0] and "(exit 2)" in failures[0]
