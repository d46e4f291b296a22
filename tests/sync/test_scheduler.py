"""Scheduler: jobs and triggers from config, persistent store, the cross-process lock, missed runs."""

import threading
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from healthsync.config.settings import ConfigError, load_settings
from healthsync.sync import scheduler as sched
from healthsync.sync.state import open_store


def settings_for(tmp_path, **over):
    user = {"state": {"url": f"sqlite:///{tmp_path}/state.db"}}
    user.update(over)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(user))
    return load_settings(cfg, environ={})


def noop():
    return 0


def test_default_jobs_are_registered_with_the_configured_triggers(tmp_path):
    s = settings_for(tmp_path)
    scheduler = sched.build_scheduler(s, {"run": noop, "escalate": noop}, blocking=False)
    scheduler.start(paused=True)
    try:
        jobs = {j.name: j for j in scheduler.get_jobs()}
        assert set(jobs) == {"run", "escalate"}
        run, esc = jobs["run"], jobs["escalate"]
        assert isinstance(run.trigger, CronTrigger)
        fields = {f.name: str(f) for f in run.trigger.fields}
        assert (fields["hour"], fields["minute"], fields["day"]) == ("6", "0", "*")
        assert str(run.trigger.timezone) == "UTC"
        assert isinstance(esc.trigger, IntervalTrigger) and esc.trigger.interval == timedelta(minutes=15)
        for job in (run, esc):
            assert job.max_instances == 1 and job.coalesce is True and job.misfire_grace_time == 600
            assert job.func is sched.execute_job  # a reference, never a pickled closure
        assert run.next_run_time.hour == 6 and run.next_run_time.minute == 0
    finally:
        scheduler.shutdown(wait=False)


def test_jobs_persist_in_the_state_database_and_unchanged_jobs_keep_their_next_run(tmp_path):
    s = settings_for(tmp_path)
    first = sched.build_scheduler(s, {"run": noop, "escalate": noop}, blocking=False)
    first.start(paused=True)
    earlier = datetime.now(timezone.utc) + timedelta(minutes=3)
    first.modify_job("healthsync.escalate", next_run_time=earlier)
    first.shutdown(wait=False)
    second = sched.build_scheduler(s, {"run": noop, "escalate": noop}, blocking=False)
    second.start(paused=True)
    try:
        kept = second.get_job("healthsync.escalate").next_run_time
        assert abs((kept - earlier).total_seconds()) < 1
    finally:
        second.shutdown(wait=False)
    # a changed trigger replaces the stored job
    s2 = settings_for(tmp_path, schedules=[{"job": "escalate", "interval_minutes": 5}])
    third = sched.build_scheduler(s2, {"run": noop, "escalate": noop}, blocking=False)
    third.start(paused=True)
    try:
        assert [j.name for j in third.get_jobs()] == ["escalate"]
        assert third.get_job("healthsync.escalate").trigger.interval == timedelta(minutes=5)
    finally:
        third.shutdown(wait=False)


def test_a_scheduled_job_without_a_function_is_a_configuration_error(tmp_path):
    s = settings_for(tmp_path)
    with pytest.raises(ConfigError) as e:
        sched.build_scheduler(s, {"run": noop}, blocking=False)
    assert "schedules: job(s) ['escalate'] have no implementation" in str(e.value)


def test_bad_cron_names_the_job(tmp_path):
    # APScheduler's own parser runs when the settings load, so `config validate` already refuses it
    with pytest.raises(ConfigError) as e:
        settings_for(tmp_path, schedules=[{"job": "run", "cron": "0 25 * * *"}])
    assert "schedules.0.cron: '0 25 * * *' (job run) is not a valid crontab" in str(e.value)


def test_the_lock_prevents_a_second_concurrent_run_across_processes(tmp_path):
    """Two 'processes' (two stores on one database, two holders) run the same job at once: one runs, one skips."""
    s = settings_for(tmp_path)
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow_run():
        calls.append(threading.current_thread().name)
        started.set()
        assert release.wait(5)
        return 0

    sched.build_scheduler(s, {"run": slow_run, "escalate": noop}, blocking=False, store=open_store(s.state.url), holder="proc-a")
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("a", sched.execute_job("run")), name="a")
    first.start()
    assert started.wait(5)
    # the second process: its own store connection and holder, same database
    sched.build_scheduler(s, {"run": slow_run, "escalate": noop}, blocking=False, store=open_store(s.state.url), holder="proc-b")
    second = threading.Thread(target=lambda: results.setdefault("b", sched.execute_job("run")), name="b")
    second.start()
    second.join(5)
    assert results.get("b") == "skipped"
    release.set()
    first.join(5)
    assert results["a"] == 0 and calls == ["a"]
    # released: the next run goes ahead
    assert sched.execute_job("run") == 0 and calls == ["a", "MainThread"]


def test_an_expired_lease_of_a_crashed_holder_is_taken_over(tmp_path):
    s = settings_for(tmp_path)
    store = open_store(s.state.url)
    past = datetime.now(timezone.utc) - timedelta(hours=3)
    assert store.acquire_lock(sched.lock_name("run"), "crashed-proc", ttl_s=60, now=past)
    sched.build_scheduler(s, {"run": lambda: 0, "escalate": noop}, blocking=False, store=store, holder="me")
    assert sched.execute_job("run") == 0


def test_exit_code_2_or_more_is_a_failure(tmp_path):
    s = settings_for(tmp_path)
    sched.build_scheduler(s, {"run": lambda: 3, "escalate": lambda: 1}, blocking=False)
    with pytest.raises(sched.JobFailed, match="exit code 3"):
        sched.execute_job("run")
    assert sched.execute_job("escalate") == 1  # record errors: the job did its work


# ----------------------------------------------------------------------------- reporting to Slack

import json  # noqa: E402
import time  # noqa: E402

from healthsync.connectors.sandbox import Sandbox  # noqa: E402
from healthsync.connectors.slack import slack_from_ready  # noqa: E402


@pytest.fixture(scope="module")
def slack_sandbox():
    with Sandbox(accounts=0, slack_message_interval_s=0) as sb:  # the default ops channel exists in the sandbox
        yield sb


def wait_for(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def ops_messages(sb, since):
    return [m for m in sb.slack_messages()[since:] if m["channel_name"] == "#healthsync-alerts"]


def test_a_failing_job_is_recorded_and_reported_to_the_ops_channel(tmp_path, slack_sandbox):
    s = settings_for(tmp_path)
    store = open_store(s.state.url)

    def broken():
        raise ValueError("replica <!channel> unreadable")

    mark = len(slack_sandbox.slack_messages())
    scheduler = sched.build_scheduler(s, {"run": noop, "escalate": broken}, blocking=False, store=store, slack=slack_from_ready(slack_sandbox.ready))
    scheduler.start()
    try:
        scheduler.modify_job("healthsync.escalate", next_run_time=datetime.now(timezone.utc))
        [msg] = wait_for(lambda: ops_messages(slack_sandbox, mark))
    finally:
        scheduler.shutdown(wait=True)
    assert "`escalate` failed" in msg["text"] and "ValueError: replica &lt;!channel&gt; unreadable" in msg["text"]
    assert "<!channel>" not in json.dumps(msg["blocks"])
    [run] = [r for r in store.recent_runs() if r["mode"] == "schedule:escalate"]
    assert run["status"] == "failed" and run["exit_code"] == 1
    assert json.loads(run["summary_json"])["event"] == "error"
    assert store.count("locks") == 0  # released even though the job raised


def test_a_run_missed_while_no_scheduler_was_up_is_reported_at_the_next_start(tmp_path, slack_sandbox):
    s = settings_for(tmp_path, schedules=[{"job": "run", "cron": "0 6 * * *", "misfire_grace_s": 60}])
    store = open_store(s.state.url)
    ran = []
    first = sched.build_scheduler(s, {"run": lambda: ran.append(1)}, blocking=False, store=store)
    first.start(paused=True)
    first.shutdown(wait=True)
    # "the machine was down at 06:00": the stored job's next run lies in the past (APScheduler's
    # own shutdown processes due jobs once, so the stored state is edited directly)
    jobstore = SQLAlchemyJobStore(engine=store.engine, tablename=sched.JOBSTORE_TABLE)
    job = jobstore.lookup_job("healthsync.run")
    job.next_run_time = datetime.now(timezone.utc) - timedelta(hours=2)
    jobstore.update_job(job)

    mark = len(slack_sandbox.slack_messages())
    second = sched.build_scheduler(s, {"run": lambda: ran.append(1)}, blocking=False, store=store, slack=slack_from_ready(slack_sandbox.ready))
    second.start()
    try:
        [msg] = wait_for(lambda: ops_messages(slack_sandbox, mark))
        assert "`run` missed its run" in msg["text"]
        assert ran == []  # beyond the grace time: reported, not run late
        nxt = second.get_job("healthsync.run").next_run_time
        assert nxt > datetime.now(timezone.utc) and (nxt.hour, nxt.minute) == (6, 0)
    finally:
        second.shutdown(wait=True)
    [run] = [r for r in store.recent_runs() if r["mode"] == "schedule:run"]
    assert json.loads(run["summary_json"])["event"] == "missed" and run["exit_code"] == 3


def test_serve_reports_configuration_errors_with_exit_code_2(tmp_path, capsys):
    s = settings_for(tmp_path, schedules=[{"job": "run", "cron": "0 6 * * *"}, {"job": "run", "interval_minutes": 5}])
    assert sched.serve(s, {"run": noop}) == 2
    assert "scheduled twice" in capsys.readouterr().out


def test_every_schedulable_job_has_a_default_implementation(tmp_path):
    from typing import get_args

    from healthsync.config.settings import Schedule

    jobs = sched.default_job_functions(settings_for(tmp_path))
    assert set(get_args(Schedule.model_fields["job"].annotation)) <= set(jobs)


def test_a_failure_streak_is_reported_once_and_the_recovery_once(tmp_path, slack_sandbox):
    s = settings_for(tmp_path)
    store = open_store(s.state.url)
    outcomes = [ValueError("first"), ValueError("second"), 0, 0]
    done = []

    def flaky():
        outcome = outcomes[len(done)]
        done.append(outcome)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    mark = len(slack_sandbox.slack_messages())
    scheduler = sched.build_scheduler(s, {"run": noop, "escalate": flaky}, blocking=False, store=store, slack=slack_from_ready(slack_sandbox.ready))
    scheduler.start()
    try:
        for n in range(1, 5):
            scheduler.modify_job("healthsync.escalate", next_run_time=datetime.now(timezone.utc))
            assert wait_for(lambda: len(done) >= n)
            # the listener runs right after the job; its record is the last thing written
            assert wait_for(lambda: len([r for r in store.recent_runs(50) if r["mode"] == "schedule:escalate"]) >= min(n, 3))
    finally:
        scheduler.shutdown(wait=True)
    texts = [m["text"] for m in ops_messages(slack_sandbox, mark)]
    assert texts == ["healthsync job `escalate` failed: ValueError: first", "healthsync job `escalate` is running again: the last run succeeded"]
    statuses = [r["status"] for r in sorted(store.recent_runs(50), key=lambda r: r["finished_at"]) if r["mode"] == "schedule:escalate"]
    assert statuses == ["failed", "failed", "ok"]  # every failure recorded, one recovery
