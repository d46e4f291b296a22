"""`healthsync schedule`: APScheduler 3 running the configured jobs, safely, with a paper trail.

- Jobs and triggers come from `settings.schedules` (cron or interval, UTC);
  defaults: the full cycle daily at 06:00, the escalation check every 15 minutes.
- The job store is the state database (`SQLAlchemyJobStore` on the store's
  engine, table `apscheduler_jobs`, managed by APScheduler itself), so a run
  that fell due while no scheduler was up is noticed at the next start: within
  `misfire_grace_s` it still runs (once: `coalesce=True`), beyond it it is
  reported as missed.
- Jobs are stored as a reference to `execute_job(name)`, never as pickled
  closures; the callables live in a per-process registry filled by
  `build_scheduler`. A job whose trigger and options are unchanged keeps its
  stored next run time; a changed one is replaced.
- `max_instances=1` stops overlap inside one process; the `locks` table (a
  lease with expiry) stops it across processes: two schedulers on one state
  database never run the same job at once, and a crashed holder's lease expires.
- A failed run (exception, or an exit code >= 2) and a missed run are recorded
  in `runs` (mode `schedule:<job>`, status `failed`) and reported to
  `escalation.ops_channel` in Slack once per change of state, with a recovery
  note when the job next succeeds. The log says the same, once per change of
  state and in one line (a job failing for its configuration every few minutes
  must not fill the log with a traceback per firing); only an unexpected error
  (a bug) adds its traceback, once, when the job starts failing.
- `serve` prints each job's trigger and next run time, and stops quietly on
  Ctrl-C (exit 130) or SIGTERM (exit 143), letting a running job finish in the
  background of the exit (its state is safe to resume).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from sqlalchemy import select

from healthsync.config.settings import ConfigError
from healthsync.connectors.base import ConfigurationError, HealthsyncError, StopRunError
from healthsync.sync.slack_messages import ops_message
from healthsync.sync.state import StateStore, open_store

log = logging.getLogger(__name__)

JOBSTORE_TABLE = "apscheduler_jobs"
#: APScheduler logs every failed job with its traceback here; the listener below reports failures instead
APSCHEDULER_EXECUTOR_LOG = "apscheduler.executors.default"


class JobFailed(HealthsyncError):
    """A job finished with an exit code that means it did not do its work (>= 2)."""


@dataclass
class _Context:
    """What `execute_job` needs in this process: the callables, the store, who we are, where to report."""

    store: StateStore
    functions: dict[str, Callable[[], Any]]
    lock_ttl: dict[str, int]
    holder: str
    slack: Any
    ops_channel: str | None


_CONTEXT: _Context | None = None
_CONTEXT_LOCK = threading.Lock()
_SCHEDULER: BaseScheduler | None = None  # the one `build_scheduler` made last (for next run times in reports)


def job_id(name: str) -> str:
    return f"healthsync.{name}"


def lock_name(name: str) -> str:
    return f"job:{name}"


def trigger_for(schedule) -> CronTrigger | IntervalTrigger:
    """The APScheduler trigger of one `schedules` entry (UTC)."""
    if schedule.cron is not None:
        try:
            return CronTrigger.from_crontab(schedule.cron, timezone=timezone.utc)
        except ValueError as e:
            raise ConfigError([f"schedules ({schedule.job}).cron: {schedule.cron!r} is not a valid crontab: {e}"]) from None
    return IntervalTrigger(minutes=schedule.interval_minutes, timezone=timezone.utc)


def execute_job(name: str) -> Any:
    """Run one job under its lock (referenced by the persistent job store, so it must stay importable).

    Returns the job's result, or "skipped" when another process holds the lock.
    """
    ctx = _CONTEXT
    if ctx is None or name not in ctx.functions:
        raise JobFailed(f"job {name!r} has no function in this scheduler process")
    lock = lock_name(name)
    if not ctx.store.acquire_lock(lock, ctx.holder, ctx.lock_ttl.get(name, 7200)):
        log.info("job %s skipped: another scheduler holds %s", name, lock)
        return "skipped"
    try:
        result = ctx.functions[name]()
    finally:
        ctx.store.release_lock(lock, ctx.holder)
    code = result.get("exit_code") if isinstance(result, dict) else getattr(result, "exit_code", result)
    if isinstance(code, int) and not isinstance(code, bool) and code >= 2:
        raise JobFailed(f"job {name} finished with exit code {code}")
    return result


def _exit_code(exc: BaseException | None) -> int:
    if isinstance(exc, (ConfigError, ConfigurationError)):
        return 2
    if isinstance(exc, StopRunError):
        return 3
    return 1


def _last_state(store: StateStore, name: str) -> str | None:
    """'failed' or 'ok': the last health change recorded for this scheduled job (None: nothing yet)."""
    runs = store.tables["runs"]
    with store.engine.connect() as conn:
        row = conn.execute(
            select(runs.c.status).where(runs.c.mode == f"schedule:{name}").order_by(runs.c.finished_at.desc()).limit(1)
        ).first()
    return row.status if row else None


def next_run_text(when: datetime | None) -> str:
    return f"{when.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC" if when else "not scheduled"


def _next_run(name: str) -> datetime | None:
    scheduler = _SCHEDULER
    job = scheduler.get_job(job_id(name)) if scheduler is not None else None
    return getattr(job, "next_run_time", None)


def report(event_kind: str, name: str, detail: str, scheduled: datetime | None, exit_code: int,
           traceback_text: str | None = None) -> None:
    """Record a failed/missed/recovered run in `runs`; tell the ops channel once per change of state.

    Every failure is recorded; only the first of a streak is posted (a job failing
    every 15 minutes posts once, not 96 times a day), and the first success after
    it posts a recovery note. Never raises: it runs in a scheduler listener.
    """
    ctx = _CONTEXT
    if ctx is None:
        return
    now = datetime.now(timezone.utc)
    failed = event_kind != "recovered"
    try:
        previous = _last_state(ctx.store, name)
        if not failed and previous != "failed":
            return  # healthy and already known to be healthy: nothing to record or say
        run_id = f"schedule-{name}-{event_kind}-{now:%Y%m%dT%H%M%S%f}"
        summary = {"job": name, "event": event_kind, "error": detail if failed else None,
                   "scheduled_for": scheduled.isoformat() if scheduled else None}
        ctx.store.start_run(run_id, f"schedule:{name}", scheduled or now)
        ctx.store.finish_run(run_id, "failed" if failed else "ok", summary, exit_code, finished_at=now)
    except Exception:  # noqa: BLE001 - a listener must not kill the scheduler; say so in the log
        log.exception("could not record the %s run of job %s", event_kind, name)
        previous = None
    if failed and previous == "failed":
        log.debug("job %s %s again (%s); already reported", name, event_kind, detail)
        return
    upcoming = next_run_text(_next_run(name))
    if failed:
        log.warning("job %s %s: %s (exit %d); next run %s; logged again when it recovers",
                    name, "failed" if event_kind == "error" else "missed its run", detail, exit_code, upcoming)
        if traceback_text:
            log.warning("job %s: unexpected error, details:\n%s", name, traceback_text.rstrip())
    else:
        log.warning("job %s is running again; next run %s", name, upcoming)
    if ctx.slack is None or not ctx.ops_channel:
        log.debug("job %s %s: no Slack ops channel configured", name, event_kind)
        return
    outcome = {"error": "failed", "missed": "missed its run", "recovered": "is running again"}[event_kind]
    text, blocks = ops_message(name, outcome, detail, scheduled or now, ok=not failed)
    try:
        ctx.slack.post(channel=ctx.ops_channel, text=text, blocks=blocks)
    except Exception as exc:  # noqa: BLE001
        log.error("could not report job %s to %s: %s", name, ctx.ops_channel, exc)


def _listener(event: JobExecutionEvent) -> None:
    name = event.job_id.removeprefix("healthsync.")
    if event.code == EVENT_JOB_MISSED:
        report("missed", name, f"the run due {event.scheduled_run_time:%Y-%m-%d %H:%M UTC} was missed (no scheduler up, or still busy)", event.scheduled_run_time, 3)
    elif event.code == EVENT_JOB_ERROR:
        exc = event.exception
        expected = isinstance(exc, (HealthsyncError, ConfigError))  # configuration, stops, failed jobs: no traceback
        report("error", name, _describe(exc), event.scheduled_run_time, _exit_code(exc),
               traceback_text=None if expected else event.traceback)
    elif event.code == EVENT_JOB_EXECUTED and event.retval != "skipped":
        report("recovered", name, "the last run succeeded", event.scheduled_run_time, 0)


def _describe(exc: BaseException) -> str:
    """One line about a job's failure, in the words of the command line's errors."""
    if isinstance(exc, (ConfigError, ConfigurationError)):
        return "configuration error: " + " ".join(str(exc).split())
    if isinstance(exc, StopRunError):
        return "stopped: " + " ".join(str(exc).split())
    if isinstance(exc, JobFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _same_job(existing, trigger, schedule) -> bool:
    return (
        existing is not None
        and str(existing.trigger) == str(trigger)
        and existing.misfire_grace_time == schedule.misfire_grace_s
        and existing.max_instances == 1
        and existing.coalesce is True
    )


def build_scheduler(
    settings,
    job_functions: dict[str, Callable[[], Any]],
    blocking: bool = True,
    *,
    store: StateStore | None = None,
    slack: Any = None,
    holder: str | None = None,
) -> BaseScheduler:
    """A configured (not started) scheduler with one job per `settings.schedules` entry.

    `job_functions` maps job names (`run`, `escalate`, ...) to zero-argument
    callables; a scheduled job without a function is a configuration error.
    """
    global _CONTEXT, _SCHEDULER
    missing = [s.job for s in settings.schedules if s.job not in job_functions]
    if missing:
        raise ConfigError([f"schedules: job(s) {missing} have no implementation in this command (available: {sorted(job_functions)})"])
    names = [s.job for s in settings.schedules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError([f"schedules: job(s) {dupes} scheduled twice; give each job one trigger"])
    store = store or open_store(settings.state.url)
    holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with _CONTEXT_LOCK:
        _CONTEXT = _Context(
            store=store,
            functions=dict(job_functions),
            lock_ttl={s.job: s.lock_ttl_s for s in settings.schedules},
            holder=holder,
            slack=slack,
            ops_channel=settings.escalation.ops_channel,
        )
    jobstore = SQLAlchemyJobStore(engine=store.engine, tablename=JOBSTORE_TABLE)
    jobstore.jobs_t.create(store.engine, checkfirst=True)
    cls = BlockingScheduler if blocking else BackgroundScheduler
    scheduler = cls(jobstores={"default": jobstore}, timezone=timezone.utc)
    scheduler.add_listener(_listener, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_EXECUTED)
    # failures are reported by the listener, one line per change of state; APScheduler's own
    # report is a traceback per firing
    logging.getLogger(APSCHEDULER_EXECUTOR_LOG).setLevel(logging.CRITICAL)
    _SCHEDULER = scheduler

    wanted = {job_id(s.job) for s in settings.schedules}
    for job in jobstore.get_all_jobs():
        if job.id.startswith("healthsync.") and job.id not in wanted:
            jobstore.remove_job(job.id)  # no longer configured
    for schedule in settings.schedules:
        trigger = trigger_for(schedule)
        if _same_job(jobstore.lookup_job(job_id(schedule.job)), trigger, schedule):
            continue  # keep its stored next run time, so a run missed while down is noticed
        scheduler.add_job(
            execute_job,
            trigger,
            args=[schedule.job],
            id=job_id(schedule.job),
            name=schedule.job,
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=schedule.misfire_grace_s,
        )
    return scheduler


def default_job_functions(settings, ready: dict | None = None) -> dict[str, Callable[[], Any]]:
    """The jobs `healthsync schedule` can run, each the same code path as its command."""
    from healthsync.sync import run

    jobs: dict[str, Callable[[], Any]] = {
        "run": lambda: run.run_cycle(settings, ready=ready, json_mode=True),
        "escalate": lambda: run.escalate_stage(settings, ready=ready),
        "pull": lambda: run.pull_stage(settings, ready=ready),
        "score": lambda: run.score_stage(settings, ready=ready),
        "sync": lambda: run.sync_stage(settings, ready=ready),
    }
    try:
        from healthsync.sync.report import write_report

        jobs["report"] = lambda: write_report(StateStore(settings.state.url), settings, settings.report.path)
    except ImportError:  # pragma: no cover - the report is optional in a build
        pass
    return jobs


def serve(
    settings,
    job_functions: dict[str, Callable[[], Any]] | None = None,
    *,
    ready: dict | None = None,
    slack: Any = None,
    store: StateStore | None = None,
    console=None,
) -> int:
    """Run the blocking scheduler until interrupted; exit code 0, or 2 for a configuration error.

    Without `job_functions` the jobs are the commands' own stages; without `slack`
    the ops channel is reached through the configured Slack (or the sandbox's).
    """
    if job_functions is None:
        job_functions = default_job_functions(settings, ready)
    if slack is None and settings.escalation.ops_channel:
        from healthsync.sync.connections import open_slack

        try:
            slack = open_slack(settings, ready)
        except ConfigurationError as e:
            (console.print if console else print)(f"sources.slack: {e}; failed runs will only be logged")
    try:
        scheduler = build_scheduler(settings, job_functions, blocking=True, store=store, slack=slack)
    except ConfigError as e:
        (console.print if console else print)(str(e))
        return 2
    if not settings.schedules:
        (console.print if console else print)("schedules: nothing is scheduled (the schedules list is empty)")
        return 2
    say = console.print if console else print
    now = datetime.now(timezone.utc)
    stored = {job.id: job.next_run_time
              for job in SQLAlchemyJobStore(engine=_CONTEXT.store.engine, tablename=JOBSTORE_TABLE).get_all_jobs()}
    for s in settings.schedules:
        upcoming = stored.get(job_id(s.job)) or trigger_for(s).get_next_fire_time(None, now)
        how = f"cron '{s.cron}' UTC" if s.cron else f"every {s.interval_minutes:g} min"
        say(f"scheduled {s.job}: {how}; next run {next_run_text(upcoming)}")
    say("running until Ctrl-C (or SIGTERM)")
    return _run_until_stopped(scheduler, say)


class _Stopped(Exception):
    def __init__(self, code: int):
        self.code = code


def _run_until_stopped(scheduler: BaseScheduler, say: Callable[[str], Any]) -> int:
    """Start the blocking scheduler; Ctrl-C -> 130, SIGTERM -> 143, quietly (no traceback)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum, _frame):
            raise _Stopped(128 + signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    code = 0
    try:
        scheduler.start()
    except _Stopped as stop:
        code = stop.code
    except KeyboardInterrupt:
        code = 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C while stopping must not end in a traceback
        try:
            if scheduler.running:
                scheduler.shutdown(wait=False)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if code:
        say("stopped" + (" (a running job was interrupted; the next run resumes it)" if _busy() else ""))
    return code


def _busy() -> bool:
    """A job of this process still holds its lock (it was running when we stopped)."""
    ctx = _CONTEXT
    if ctx is None:
        return False
    locks = ctx.store.tables["locks"]
    try:
        with ctx.store.engine.connect() as conn:
            return conn.execute(select(locks.c.name).where(locks.c.holder == ctx.holder).limit(1)).first() is not None
    except Exception:  # noqa: BLE001 - only for the farewell line
        return False
