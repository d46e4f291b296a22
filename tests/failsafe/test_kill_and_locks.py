"""Locks that know their holder (issue 13 item 5) and kills at random moments.

A real `healthsync run` subprocess is SIGKILLed after a random delay (not at a hook point), for several
seeds; the next run takes the lease over at once (its holder's process is gone), `status` shows the
killed run as `abandoned`, and reruns converge: 0 duplicate tasks, 0 duplicate Slack messages, every
account's confirmed values in the CRM (0 lost writes), and a final run that wants to write nothing.
Two runs starting at once on a fresh state database never crash.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from healthsync.sync.state import open_store

from failsafe_cli import BIN, assert_no_traceback, clean_env, healthsync, one_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_helpers import assert_crm_matches_pushed, assert_no_duplicate_messages, assert_no_duplicate_tasks, writes  # noqa: E402


def _kill_after(args, env, sb, delay: float) -> int | None:
    """Start `healthsync run ...`, SIGKILL it `delay` seconds after its first request to the sandbox.

    Counting from the first request (not from the start of the process) puts the kill inside the
    run's work whatever the machine's load makes of the interpreter's start-up. Returns the exit
    code if the run finished first, None when it was killed.
    """
    seq = sb.requests()["last_seq"]
    proc = subprocess.Popen([str(BIN), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not sb.requests(since=seq)["requests"]:
        time.sleep(0.01)
    try:
        return proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        return None


def _converged(sb, ready, env, state_url) -> None:
    seq = sb.requests()["last_seq"]
    final = one_json(healthsync("run", "--sandbox", ready, "--json", env=env))
    assert final["status"] == "ok", final["errors"]
    assert writes(sb.requests(since=seq)["requests"]) == [], "a converged state needs no further write"
    assert final["tasks_created"] == 0 and final["alerts_sent"] == 0
    store = open_store(state_url)
    try:
        assert store.failed_queue() == {}
        assert assert_crm_matches_pushed(sb, store) > 0
        for crm in ("salesforce", "hubspot"):  # 0 lost writes: every live account carries its confirmed score
            live = store.live_ids(crm, "accounts")
            assert live and live <= set(store.pushed_values(crm, "accounts"))
        assert_no_duplicate_tasks(sb)
        assert_no_duplicate_messages(sb, store)
    finally:
        store.close()


def _kill_runs(world, seed: int, kills: int) -> None:
    rng = random.Random(seed)
    sb, ready, env = world(accounts=20, seed=40 + seed)
    # 60 ms per request stretches a first run's work to ~4.5 s, so a random delay lands anywhere in
    # it: the fields check, pull, write-back batches, task creation, the Slack stage or the record step
    sb.set_faults({api: {"latency_ms": 60} for api in ("salesforce", "hubspot", "slack")})
    state_url = env["HEALTHSYNC__STATE__URL"]
    killed = 0
    for _ in range(kills):
        if _kill_after(("run", "--sandbox", ready, "--json"), env, sb, rng.uniform(0.0, 3.5)) is None:
            killed += 1
    sb.clear_faults()
    status = one_json(healthsync("status", "--json", env=env))
    assert not [r for r in status["runs"] if r["status"] == "running"], "a killed run must not show as running"
    resumed = healthsync("run", "--sandbox", ready, "--json", env=env)
    assert_no_traceback(resumed)
    summary = one_json(resumed)
    # the lease of a killed run on this host is taken over at once: never "another run is in progress"
    assert "in progress" not in (summary["stopped_reason"] or ""), summary["stopped_reason"]
    assert summary["status"] in ("ok", "record_errors"), summary["errors"]
    _converged(sb, ready, env, state_url)
    assert killed >= 1, "no run was killed: the delays missed the runs"


@pytest.mark.parametrize("seed", [1, 2])
def test_given_runs_killed_at_random_moments_when_rerun_then_converges_with_no_duplicate_and_nothing_lost(world, seed):
    _kill_runs(world, seed, kills=2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 4])
def test_given_more_kills_at_random_moments_then_still_converges(world, seed):
    _kill_runs(world, seed, kills=3)


def test_given_a_killed_run_then_status_shows_it_abandoned_and_the_next_run_does_not_wait(world):
    sb, ready, env = world(accounts=30, seed=9)
    sb.set_faults({"salesforce": {"latency_ms": 400}})  # slow enough to be killed while it holds the lease
    proc = subprocess.Popen([str(BIN), "run", "--sandbox", str(ready), "--json"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    store = open_store(env["HEALTHSYNC__STATE__URL"])
    deadline = time.time() + 60
    while time.time() < deadline and not (store.recent_runs(1) and store.lock_holder_of("run_cycle")):
        time.sleep(0.1)
    assert store.lock_holder_of("run_cycle"), "the run took its lease"
    running = one_json(healthsync("status", "--json", env=env))
    assert running["runs"][0]["status"] == "running"  # alive: shown as running
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_id = running["runs"][0]["run_id"]
    shown = one_json(healthsync("status", "--json", env=env))
    assert [r["status"] for r in shown["runs"] if r["run_id"] == killed_id] == ["abandoned"]
    sb.clear_faults()
    started = time.monotonic()
    r = healthsync("run", "--sandbox", ready, "--json", env=env)
    summary = one_json(r)
    assert summary["status"] in ("ok", "record_errors") and r.returncode in (0, 1), summary["stopped_reason"]
    assert time.monotonic() - started < 120  # not the 10-minute lease
    store.close()
    after = open_store(env["HEALTHSYNC__STATE__URL"])
    row = [x for x in after.recent_runs(5) if x["run_id"] == killed_id][0]
    assert row["status"] == "abandoned"  # recorded so by the run that took the lease over
    after.close()


def test_given_a_lease_held_by_a_live_process_on_another_host_then_the_run_waits_for_its_expiry(world):
    from healthsync.sync.run import RUN_LOCK

    sb, ready, env = world(accounts=3, seed=2)
    store = open_store(env["HEALTHSYNC__STATE__URL"])
    assert store.acquire_lock(RUN_LOCK, "other-host.example:4242:20260101T000000Z-abcdef", 600)
    r = healthsync("run", "--sandbox", ready, "--json", env=env)
    assert r.returncode == 3
    reason = one_json(r)["stopped_reason"]
    assert "in progress" in reason and "other-host.example" in reason and "4242" in reason
    store.close()


_OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from healthsync.sync.state import open_store
print("ready", flush=True)
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.002)
open_store(sys.argv[1]).close()
"""


def test_given_a_fresh_state_database_when_two_processes_open_it_at_once_then_none_crashes(tmp_path):
    """8 pairs of processes open (and so migrate) one fresh database each at the same instant.

    Before the migration was serialised, 2 of 8 such pairs crashed ("table runs already exists").
    """
    go = tmp_path / "go"
    procs = []
    for pair in range(8):
        url = f"sqlite:///{tmp_path}/fresh-{pair}/state.db"
        procs += [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, url, str(go)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=clean_env()) for _ in range(2)]
    for p in procs:  # everyone imported and waits at the barrier
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    failures = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        if p.returncode != 0:
            failures.append(err.strip().splitlines()[-1:])
    assert failures == []


def test_given_two_runs_at_once_on_a_fresh_state_database_then_one_runs_and_the_other_waits_or_runs_after(world):
    sb, ready, env = world(accounts=4, seed=12)
    procs = [subprocess.Popen([str(BIN), "run", "--sandbox", str(ready), "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert "Traceback" not in err, err
        assert p.returncode in (0, 1, 3), err
        summary = json.loads(out)
        if p.returncode == 3:
            assert "in progress" in summary["stopped_reason"]
    assert_no_duplicate_tasks(sb)


def test_given_a_fresh_postgresql_database_when_four_processes_open_it_at_once_then_none_crashes(tmp_path, fresh_postgres_url):
    """The same on PostgreSQL, where the migration is serialised by pg_advisory_xact_lock."""
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, fresh_postgres_url, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=clean_env()) for _ in range(4)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    failures = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        if p.returncode != 0:
            failures.append(err.strip().splitlines()[-1:])
    assert failures == []
    store = open_store(fresh_postgres_url)
    try:
        from healthsync.sync.state import head_revision

        assert store.version() == head_revision()
    finally:
        store.close()
