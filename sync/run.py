"""The main job: pull -> score -> forecast -> write-back -> playbooks -> escalate -> record.

`run_cycle` runs it once and returns a `RunSummary`; `pull_stage`,
`score_stage`, `sync_stage` and `escalate_stage` run one stage each for
`healthsync pull | score | sync | escalate` and return JSON-safe dicts.

Each CRM's work runs in its own lane (sync/lanes.py): fields check, pull,
write-back and tasks per CRM, around the shared scoring step and the shared
Slack step. How a run ends (exit codes: README "Exit codes", sync/summary.py):

- a lane stops (StopRunError: unreachable, quota, retries exhausted): that CRM's
  remaining stages are skipped and what it stored is kept; the other CRM goes
  on; status `stopped`, exit 3, `stopped_reason` names the CRM, the call and what
  to do. The next run resumes.
- ConfigurationError before anything is sent (fields check, playbooks, state):
  status `failed`, exit 2, nothing sent.
- record errors (write failures, invalid records, playbook/escalation errors):
  the rest goes on; status `record_errors`, exit 1, never `ok`.
- anything else (a bug, or a test's hook simulating a crash) propagates after
  the run is marked `failed`; state stays consistent because every stage
  commits its own small transactions in an order that is safe to replay.

`hooks(point)` is called at: after_pull, after_score, after_push_batch (inside
write-back), after_writeback, after_playbooks, after_escalation, before_record;
the playbooks and escalation stages add their own points (after_task_create,
after_slack_send).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, Iterator

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from healthsync.config.settings import ConfigError, Settings
from healthsync.connectors.base import ConfigurationError, HealthsyncError, StopRunError
from healthsync.connectors.errors import classify
from healthsync.sync.clock import now_for
from healthsync.sync.connections import (
    Connections,
    connect,
    ensure_connector_fields,
    forget_sandbox_world,
    refuse_demo_state,
    state_location,
)
from healthsync.sync.crm_directory import refresh_directory
from healthsync.sync.lanes import Lane, LaneStop, SharedStep, alive, checkpoint, each_lane, make_lanes, side_by_side
from healthsync.sync.pending_writes import collect_pending_writes
from healthsync.sync.pull import PULLED_OBJECTS, PullStats, pull_object
from healthsync.sync import score_memo
from healthsync.sync.score_job import ScoreResult, record_history, score_replica
from healthsync.sync.state import HOST, StateStore, holder_alive, lock_holder, open_store
from healthsync.sync.summary import RunSummary, render_diff
from healthsync.sync.warehouse_job import warehouse_stage
from healthsync.sync.writeback import (
    ConfirmedPrefetch,
    CrmWriteReport,
    WritePlan,
    desired_outputs,
    execute_plan,
    plan_writes,
    sends_bulk_jobs,
)

log = logging.getLogger(__name__)

Hooks = Callable[[str], None]


def new_run_id(now: datetime) -> str:
    """Sortable and unique: the run's UTC time plus a random suffix."""
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def _optional(module: str, name: str):
    """A stage owned by another module; None when that module is not part of this build."""
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


class _Progress:
    """rich progress bars on stderr; silent in JSON mode and when stderr is no terminal (a log file or a
    pipe would only collect the blank lines a transient bar leaves behind)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and Console(stderr=True).is_terminal

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if not self.enabled:
            yield lambda n=1: None
            return
        progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )
        with progress:
            task_id = progress.add_task(description, total=total)
            yield lambda n=1: progress.advance(task_id, n)


#: The state lock of a run: one cycle at a time per state database (manual runs, the scheduler,
#: several workers). Renewed as the run makes progress. Its holder names host and pid: a run on
#: the same host whose holder process is gone takes it over at once; a holder on another host
#: blocks the next run for at most this long after its last progress.
RUN_LOCK = "run_cycle"
RUN_LOCK_TTL_S = 600.0


class _RunLock:
    """The run's lease in the `locks` table, renewed (at most every 30 s) whenever the run makes progress."""

    def __init__(self, store: StateStore, run_id: str):
        self.store, self.holder = store, lock_holder(run_id)
        self._renewed = 0.0
        self._renewing = threading.Lock()  # the lanes' threads renew it too

    def acquire(self) -> bool:
        self._renewed = time.monotonic()
        return self.store.acquire_lock(RUN_LOCK, self.holder, RUN_LOCK_TTL_S)

    def renew(self) -> None:
        checkpoint()  # a lane thread of an interrupted run stops here
        if time.monotonic() - self._renewed >= 30 and self._renewing.acquire(blocking=False):
            try:
                self.acquire()
            finally:
                self._renewing.release()

    def release(self) -> None:
        self.store.release_lock(RUN_LOCK, self.holder)

    def busy_reason(self) -> str:
        """Why the lease could not be taken: who holds it and when it frees up."""
        row = self.store.lock_holder_of(RUN_LOCK) or {}
        holder = str(row.get("holder") or "unknown")
        host, _, rest = holder.partition(":")
        pid, _, run = rest.partition(":")
        who = f"run {run} (host {host}, pid {pid})" if run else f"holder {holder}"
        if host == HOST and holder_alive(holder):
            when = "try again when it has finished"
        else:
            when = (f"try again when it has finished (a run on another host that died releases it "
                    f"{RUN_LOCK_TTL_S / 60:.0f} minutes after its last progress)")
        return f"another healthsync run is in progress on this state database: {who}; {when}"

    def wrap(self, hooks: Hooks | None) -> Hooks:
        def renewing(point: str) -> None:
            self.renew()
            if hooks is not None:
                hooks(point)

        return renewing


#: the lanes run in threads (sync/lanes.py); their updates of the run's summary take this lock
_SUMMARY_LOCK = threading.RLock()


def _hook(hooks: Hooks | None, point: str) -> None:
    if hooks is not None:
        hooks(point)


def load_owners(connectors: dict, on_stop: Callable[[str, StopRunError], None] | None = None) -> pd.DataFrame | None:
    """Owners known to the CRMs (email plus whatever the CRM tells: name, role, manager_email).

    A CRM that stops while listing owners calls `on_stop(crm, exc)` (its lane stops) when
    given; without it the StopRunError propagates.
    """
    frames = []
    for connector in connectors.values():
        try:
            for page in connector.pull("owners"):
                if page.records is not None and len(page.records):
                    frames.append(page.records)
        except HealthsyncError as exc:
            if isinstance(exc, StopRunError):
                if on_stop is None:
                    raise
                on_stop(connector.name, exc)
                continue
            log.warning("owners of %s not available: %s", connector.name, exc)
    if not frames:
        return None
    owners = pd.concat(frames, ignore_index=True)
    if "email" in owners.columns:
        owners = owners.dropna(subset=["email"])
        owners["email"] = owners["email"].astype(str).str.lower()
        owners = owners.drop_duplicates("email", keep="first").reset_index(drop=True)
    return owners


def _writes_json(reports: dict) -> dict[str, dict]:
    return {crm: r.to_json() for crm, r in reports.items()}


def _failed_summary(settings: Settings, exc: BaseException, *, dry_run: bool, state: str | None, mode: str | None = None) -> RunSummary:
    """The summary of a run that could not start (configuration, state store, sandbox clock)."""
    summary = RunSummary(run_id=new_run_id(datetime.now().astimezone()), mode=mode or ("live" if settings.live else "sandbox"),
                         dry_run=dry_run, state=state)
    kind = classify(exc)
    summary.status = kind.status
    summary.failure_kind = kind.kind if kind.status == "failed" else None
    if kind.status == "stopped":
        summary.stopped_reason = str(exc)
    summary.errors.append(f"{'stopped' if kind.status == 'stopped' else kind.kind + ' error'}: {exc}")
    return summary


def run_cycle(
    settings: Settings,
    *,
    ready: dict | None = None,
    dry_run: bool = False,
    json_mode: bool = False,
    hooks: Hooks | None = None,
    console: Console | None = None,
) -> RunSummary:
    """One full cycle; see the module docstring. Never raises for a stop or a configuration problem."""
    clock0 = time.monotonic()
    console = console or Console()
    progress = _Progress(not json_mode)
    location = state_location(settings, ready)
    try:
        conns = connect(settings, ready)
    except (ConfigurationError, StopRunError) as exc:
        summary = _failed_summary(settings, exc, dry_run=dry_run, state=location.shown)
        summary.duration_s = time.monotonic() - clock0
        if not json_mode:
            summary.render(console)
        return summary
    try:
        summary = _run(settings, conns, dry_run=dry_run, hooks=hooks, progress=progress, console=console, json_mode=json_mode)
    finally:
        conns.close()
    summary.duration_s = time.monotonic() - clock0
    if not json_mode:
        if dry_run and summary.diff is not None:
            render_diff(summary.diff, console)
        summary.render(console)
    return summary


def _run(settings: Settings, conns: Connections, *, dry_run: bool, hooks, progress: _Progress, console, json_mode) -> RunSummary:
    location = state_location(settings, conns.ready)
    try:
        store = open_store(conns.state_url)
        now = now_for(conns.ready)
    except (ConfigurationError, StopRunError) as exc:
        return _failed_summary(settings, exc, dry_run=dry_run, state=location.shown, mode=conns.mode)
    run_id = new_run_id(now)
    summary = RunSummary(run_id=run_id, mode=conns.mode, dry_run=dry_run, started_at=now.isoformat(), state=store.shown)
    summary.notes.extend(conns.notes)
    if conns.embedded is not None and not json_mode:
        for note in conns.notes:
            Console(stderr=True).print(note)
    store.start_run(run_id, conns.mode, now)
    lock = _RunLock(store, run_id)
    if not lock.acquire():
        summary.status = "stopped"
        summary.stopped_reason = lock.busy_reason()
        summary.errors.append(f"stopped: {summary.stopped_reason}")
        _finish(store, summary)
        return summary
    try:
        abandoned = store.mark_abandoned(exclude=run_id)
        if abandoned:
            summary.notes.append(f"runs left unfinished by a process that is gone, now marked abandoned: {', '.join(abandoned)}")
        if conns.embedded is not None and conns.embedded.fresh:
            forget_sandbox_world(store)  # a new demo world: the old one's bookkeeping goes (never on a live state)
        elif conns.mode == "live":
            refuse_demo_state(store)  # never sync real CRMs with the demo's cursors (exit 2)
        _cycle(settings, conns, store, summary, now=now, dry_run=dry_run, hooks=lock.wrap(hooks), progress=progress,
               on_progress=lock.renew)
        summary.finish_status()
    except (ConfigurationError, ConfigError) as exc:
        summary.status = "failed"
        summary.failure_kind = classify(exc).kind
        summary.errors.append(f"configuration error: {exc}")
    except StopRunError as exc:  # a shared step (the sandbox clock, Slack) cannot go on
        summary.add_stop(LaneStop(system=exc.system or "run", stage="run", kind=classify(exc).kind, reason=str(exc),
                                  call=exc.call, action=exc.action))
        summary.finish_status()
    except BaseException as exc:
        summary.status = "failed"
        summary.failure_kind = "internal"
        summary.errors.append(f"crashed: {type(exc).__name__}")
        _finish(store, summary)
        raise
    finally:
        lock.release()
    _finish(store, summary)
    return summary


def _finish(store: StateStore, summary: RunSummary) -> None:
    try:
        store.finish_run(summary.run_id, summary.status, summary.to_json(include_diff=False), summary.exit_code)
    except Exception:  # the summary is still returned/printed; the run row stays 'running'
        log.warning("could not record run %s", summary.run_id, exc_info=True)


def _refresh_directory(store: StateStore, lane: Lane, now: datetime) -> list[str]:
    """Owners' names and the CRM's record URLs, for the report (sync/crm_directory.py), after the lane's pull.

    Not a stage of its own: what cannot be read is a note; only a stop (quota, auth) stops the lane.
    """
    if not lane.alive:
        return []
    try:
        return refresh_directory(store, lane.connector, now)
    except StopRunError as exc:
        lane.halt("owners and instance", exc)
        return []


def _lane_plan(plan: WritePlan, crm: str) -> WritePlan:
    """The part of a write plan that belongs to one CRM (its lane sends only that)."""
    return WritePlan(
        records=[r for r in plan.records if r.crm == crm],
        invalid=[r for r in plan.invalid if r.crm == crm],
        unchanged={k: v for k, v in plan.unchanged.items() if k[0] == crm},
        stale={k: v for k, v in plan.stale.items() if k[0] == crm},
    )


def _dry_writes(plan: WritePlan, crms: list[str]) -> tuple[dict, dict]:
    diff = plan.to_json()
    writes = {crm: {"records_changed": c["changed"], "unchanged": c["unchanged"], "invalid": c["invalid"],
                    "failed": 0, "api_calls": 0, "retried": 0}
              for crm, c in diff["by_crm"].items()}
    for crm in crms:
        writes.setdefault(crm, {"records_changed": 0, "unchanged": 0, "invalid": 0, "failed": 0, "api_calls": 0, "retried": 0})
    return diff, writes


def _cycle(settings, conns: Connections, store: StateStore, summary: RunSummary, *, now, dry_run, hooks, progress,
           on_progress: Callable[[], None] = lambda: None) -> None:
    lanes = make_lanes(conns.connectors)
    try:
        _lanes_cycle(settings, conns, store, summary, lanes, now=now, dry_run=dry_run, hooks=hooks, progress=progress,
                     on_progress=on_progress)
    finally:
        for lane in lanes:
            summary.lanes[lane.crm] = {
                "status": "ok" if lane.alive else "stopped",
                "stages": list(lane.stages_done),
                "stopped": lane.stop.to_json() if lane.stop else None,
            }
            if lane.stop and all(s.get("system") != lane.crm for s in summary.stopped):
                summary.add_stop(lane.stop)


def _lanes_cycle(settings, conns: Connections, store: StateStore, summary: RunSummary, lanes: list[Lane], *, now, dry_run,
                 hooks, progress, on_progress) -> None:
    # preflight: nothing is sent before every CRM's fields and the playbooks are known to be right
    load_playbooks = _optional("healthsync.playbooks.definitions", "load_playbooks")
    if load_playbooks is not None and settings.playbooks.enabled:
        load_playbooks(settings)  # ConfigError -> failed, exit 2, nothing sent
    created: list[str] = []

    def check_fields(lane: Lane) -> None:
        done = lane.run("fields check", lambda: ensure_connector_fields(lane.crm, lane.connector, sandbox=conns.mode == "sandbox"),
                        fail_fast_on_config=True)
        created.extend(done or [])

    each_lane(lanes, check_fields, together=False)  # a few calls; a ConfigurationError fails the run before any lane starts
    if created:
        summary.notes.append(f"created healthsync fields in the sandbox: {len(created)}")

    # pull, per lane
    pulled: list[PullStats] = []
    # the playbook tasks changed since the last run are read back during the pull, beside it (sync/task_mirror.py
    # memoises the read for the run's tasks and escalation stages): in HubSpot it is a search at 5/s over every
    # task created by the last run, ~12 s at 100,000 accounts per CRM that otherwise came after the pull
    read_tasks = _optional("healthsync.sync.task_mirror", "read_tasks") if settings.playbooks.enabled else None
    confirmed = ConfirmedPrefetch(store, settings)
    # the planner's reads of every episode and playbook condition, beside the pull too (only the plan changes them)
    planning_reads = _optional("healthsync.sync.playbooks_job", "PlanningReads") if settings.playbooks.enabled else None
    planning_reads = None if planning_reads is None else planning_reads(store).start()
    with progress.task("pull", None) as advance:
        def pull_lane(lane: Lane) -> None:
            read_back = None if read_tasks is None else lambda: read_tasks(store, lane.connectors, now)
            side_by_side(lambda: pull_objects(lane), read_back)

        def pull_objects(lane: Lane) -> None:
            # write-back Bulk jobs an earlier run left running: settled before anything is read or planned
            collected = lane.run("collect of Bulk jobs", lambda: collect_pending_writes(store, lane.connector, now=now))
            if collected is None:
                return
            if collected.collected or collected.running:
                with _SUMMARY_LOCK:
                    summary.notes.append(f"{lane.crm}: {len(collected.collected)} Bulk job(s) of an earlier run collected, "
                                         f"{len(collected.running)} still running")
            versions = {object: store.replica_version(lane.crm, object) for object in PULLED_OBJECTS}
            for object in PULLED_OBJECTS:
                stats = lane.run(
                    f"pull of {object}",
                    lambda object=object: pull_object(store, lane.connector, object, now=now,
                                                      on_page=lambda n: (advance(n), on_progress())),
                )
                if stats is None:
                    return
                if store.replica_version(lane.crm, object) != versions[object]:
                    confirmed.start(lane.crm)  # the run will plan writes: read this CRM's confirmed values meanwhile
                with _SUMMARY_LOCK:
                    pulled.append(stats)
                    summary.pulled.setdefault(stats.crm, {})[stats.object] = {"records": stats.records, "deleted": stats.deleted}
                    summary.data_problems += len(stats.problems)
                    summary.warnings.extend(stats.problems[: max(0, 50 - len(summary.warnings))])
            notes = _refresh_directory(store, lane, now)
            with _SUMMARY_LOCK:
                summary.notes.extend(notes)

        each_lane(lanes, pull_lane)  # concurrently: a thread per CRM; the shared scoring waits for both
    _hook(hooks, "after_pull")

    live = alive(lanes)
    if not live:
        summary.stages_skipped.append("score, write-back, playbooks, escalation (no CRM could go on)")
        if planning_reads is not None:
            planning_reads.take()  # not left reading the state behind the run
        return

    # product usage aggregated in the warehouse (sync/warehouse_job.py): a configuration problem
    # fails the run here (exit 2, nothing written); an unreachable warehouse lets the CRMs' stages
    # go on and ends the run `stopped` (exit 3, see _end_warehouse_stage)
    with progress.task("warehouse", None):
        usage = warehouse_stage(settings, conns.ready, now)

    # score + forecast: shared, over the replica of every CRM, as last pulled. A stopped CRM's accounts
    # are scored from what its state kept (the forecast adjusts the whole book at once, so leaving them
    # out would move the other CRM's opportunities); only the live lanes write, task and record them.
    crms = [lane.crm for lane in lanes]
    with progress.task("score", None):
        # nothing the scores depend on changed since the last run wrote everything: its scores, not a rescoring
        memo = score_memo.reuse(store, settings, crms, now) if usage is None and len(live) == len(lanes) else None
        scored = memo[0] if memo else score_replica(store, settings, crms, now, usage=usage)
    summary.accounts_scored = len(scored.scores)
    summary.bands = scored.bands
    summary.opportunities_adjusted = len(scored.opportunities)
    if memo:
        summary.notes.append(f"scores of run {memo[1]} reused: nothing they depend on changed since (same day, same replica,"
                             " same configuration); no rescoring, nothing to write")
    else:  # data-quality KPIs of what was just pulled and scored: recorded and alerted before anything is written
        _data_quality(store, settings, conns, summary, crms, scored, pulled, usage, now, record=not dry_run)
    _hook(hooks, "after_score")

    # the playbook plan: both CRMs' episodes planned and recorded once (the per-owner daily cap spans them), on a
    # thread of its own while the writes are planned and sent; each lane's task creation waits for it
    plan_tasks = _optional("healthsync.sync.playbooks_job", "plan_playbooks")
    if plan_tasks is None:
        summary.stages_skipped.append("playbooks (not in this build)")
    planning = None if plan_tasks is None else SharedStep("playbook plan", lambda: plan_tasks(
        store, settings, scored.scores, {lane.crm: lane.connector for lane in live}, now, summary.run_id,
        dry_run=dry_run, hooks=hooks, crms=[lane.crm for lane in live], prefetched=planning_reads))
    try:
        _write_and_task(store, settings, summary, scored, live, planning, memo=memo, confirmed=confirmed, now=now,
                        dry_run=dry_run, hooks=hooks, progress=progress)
    finally:
        if planning is not None:
            planning.wait()  # never left recording episodes behind a failing run
    if planning is not None:
        planned = planning.join()
        with _SUMMARY_LOCK:
            summary.tasks_adopted += planned.result.tasks_adopted
            summary.tasks_queued += planned.result.tasks_queued
            summary.episodes_opened += planned.result.episodes_opened
            summary.episodes_closed += planned.result.episodes_closed
            summary.add_errors(list(planned.result.errors))
    _hook(hooks, "after_writeback")
    _hook(hooks, "after_playbooks")

    # escalation in Slack, for the CRMs still going
    _escalate(settings, conns, store, summary, lanes, scored, now=now, dry_run=dry_run, hooks=hooks, progress=progress)
    _hook(hooks, "after_escalation")

    # record
    _hook(hooks, "before_record")
    if not memo:
        _drift(store, settings, scored, summary, record=not dry_run)
    if not dry_run:
        live_crms = [lane.crm for lane in alive(lanes)]
        if not memo:
            live_scores = pd.concat([_rows_of(scored.scores, crm) for crm in live_crms]) if live_crms else scored.scores.iloc[0:0]
            record_history(store, settings, live_scores, summary.run_id, now, features=scored.features)
            _keep_scores(store, settings, summary, crms, scored, usage, everything_written=len(live_crms) == len(lanes), now=now)
        _report(store, settings, summary, now)
    _end_warehouse_stage(summary, usage)


def _write_and_task(store, settings, summary: RunSummary, scored: ScoreResult, live: list[Lane], planning: SharedStep | None, *,
                    memo, confirmed: ConfirmedPrefetch, now, dry_run, hooks, progress) -> None:
    """Each live lane's write-back, then (or, while Bulk jobs run, beside it) the tasks of the run's playbook plan."""
    plan = WritePlan() if memo else plan_writes(store, settings, desired_outputs(scored.scores, scored.opportunities, now),
                                                [lane.crm for lane in live], prefetched=confirmed)
    summary.invalid = len(plan.invalid)
    if not dry_run and not memo:  # the scale these writes use: kept by the next run while the book stays within 2% with it
        store.set_forecast_scale(scored.forecast_scale, summary.run_id, now)
    if dry_run:
        summary.diff, summary.writes = _dry_writes(plan, [lane.crm for lane in live])

    with progress.task("write-back", None if dry_run else len(plan.records)) as advance:
        def sync_lane(lane: Lane) -> None:
            lane_plan = _lane_plan(plan, lane.crm)
            write_back = None if dry_run else lambda: _write_back(store, settings, summary, lane, lane_plan, now=now, hooks=hooks,
                                                                   on_batch=advance)
            make_tasks = None if planning is None or dry_run else lambda: tasks(lane)
            if _waits_on_jobs(lane, lane_plan):  # neither needs the other's outcome: the tasks go on while the jobs run
                side_by_side(write_back, make_tasks)
            else:
                for stage in (write_back, make_tasks):
                    if stage is not None:
                        stage()

        def tasks(lane: Lane) -> None:
            if not lane.alive:
                return
            planned = planning.result()  # type: ignore[union-attr]
            create_planned_tasks = _optional("healthsync.sync.playbooks_job", "create_planned_tasks")
            result = lane.run("tasks", lambda: create_planned_tasks(store, planned, lane.connectors, now, hooks=hooks, crms=[lane.crm]))
            if result is None:
                return
            with _SUMMARY_LOCK:
                summary.tasks_created += result.tasks_created
                summary.episodes_closed += result.episodes_closed
                summary.add_errors(list(result.errors))

        each_lane(live, sync_lane)  # concurrently: one CRM's write-back and tasks never wait for the other's


def _keep_scores(store, settings, summary: RunSummary, crms, scored: ScoreResult, usage, *, everything_written: bool, now) -> None:
    """The memo for the next run (sync/score_memo.py): kept only when this run wrote everything it planned."""
    try:
        if everything_written and usage is None and not summary.stopped:
            score_memo.save(store, settings, crms, now, scored, summary.run_id)
        else:
            score_memo.forget(store, summary.run_id, now)
    except Exception as exc:  # noqa: BLE001 - the memo is derived data; the next run scores afresh
        log.warning("the scoring memo could not be kept", exc_info=True)
        summary.warnings.append(f"scores not kept for the next run: {type(exc).__name__}")


def _data_quality(store, settings, conns, summary: RunSummary, crms, scored, stats, usage, now, *, record: bool) -> None:
    """Per-source data-quality KPIs (sync/data_quality.py): in the summary; recorded and alerted unless a dry run."""
    from healthsync.sync import data_quality as dq

    try:
        summary.data_quality = dq.measure(store, settings, crms, scored, stats, usage, now)
        if not record:
            return
        pending = dq.record(store, summary.run_id, dq.evaluate(summary.data_quality, settings), now)
        if settings.data_quality.alert:
            dq.announce(store, conns.slack, settings.escalation.ops_channel, pending, now)
    except Exception as exc:  # noqa: BLE001 - a KPI failure never fails the sync; it is reported
        log.warning("data-quality KPIs failed", exc_info=True)
        summary.warnings.append(f"data-quality KPIs failed: {type(exc).__name__}")


def _end_warehouse_stage(summary: RunSummary, usage) -> None:
    """An unreachable warehouse ends an otherwise finished run `stopped` (exit 3): usage is missing this time."""
    if usage is None or not usage.unreachable:
        return
    summary.add_stop(LaneStop(system="warehouse", stage="usage", kind="unreachable",
                              reason=f"{usage.unreachable} (scored without warehouse usage this run)"))


def _rows_of(scores: pd.DataFrame, crm: str) -> pd.DataFrame:
    """The scored accounts of one CRM (by the `crm` column, else the id prefix)."""
    if "crm" in scores.columns:
        return scores[scores["crm"].astype("string") == crm]
    prefix = {"salesforce": "sf:", "hubspot": "hs:"}.get(crm, f"{crm}:")
    return scores[scores["account_id"].astype("string").str.startswith(prefix)]


def _waits_on_jobs(lane: Lane, plan: WritePlan) -> bool:
    """Whether this lane's write-back or its tasks may go as Bulk API 2.0 jobs (a connector with a
    `bulk_threshold`: Salesforce, no per-second limit): a job is mostly waiting for its status to change,
    so the lane's write-back and task creation run side by side (sync/lanes.py `side_by_side`). The
    tasks' number is known only once the run's playbook plan is made (the day's releases from the queue
    are thousands at scale: 10 per owner), so the lane does not wait to know it. Otherwise (HubSpot: one
    allowance for both) the write-back goes first and the tasks after it.
    """
    return bool(getattr(lane.connector, "bulk_threshold", None)) or \
        sends_bulk_jobs(lane.connector, Counter(record.object for record in plan.records).values())


def _write_back(store, settings, summary: RunSummary, lane: Lane, plan: WritePlan, *, now, hooks, on_batch) -> None:
    """One lane's write-back; a stop keeps the outcome of every batch sent so far."""
    partial: dict[str, CrmWriteReport] = {}

    def push() -> dict[str, CrmWriteReport]:
        try:
            return execute_plan(store, settings, plan, lane.connectors, run_id=summary.run_id, now=now, hooks=hooks, on_batch=on_batch)
        except StopRunError as exc:
            partial.update(getattr(exc, "reports", None) or {})
            raise

    reports = lane.run("write-back", push) or partial
    report = reports.get(lane.crm)
    if report is not None:
        with _SUMMARY_LOCK:
            summary.writes[lane.crm] = report.to_json()
            summary.add_errors(report.errors)


def _escalate(settings, conns: Connections, store, summary: RunSummary, lanes: list[Lane], scored: ScoreResult, *, now, dry_run,
              hooks, progress) -> None:
    run_escalation = _optional("healthsync.sync.escalation", "run_escalation")
    if run_escalation is None:
        summary.stages_skipped.append("escalation (not in this build)")
        return
    if conns.slack is None:
        summary.stages_skipped.append("escalation (Slack not configured)")
        return
    by_crm = {lane.crm: lane for lane in lanes}
    with progress.task("escalation", None):
        owners = load_owners({lane.crm: lane.connector for lane in alive(lanes)},
                             on_stop=lambda crm, exc: by_crm[crm].halt("owners", exc))
        live = {lane.crm: lane.connector for lane in alive(lanes)}
        if not live:
            summary.stages_skipped.append("escalation (no CRM could go on)")
            return
        try:
            result = run_escalation(store, settings, conns.slack, live, now, summary.run_id,
                                    scores=scored.scores, owners=owners, dry_run=dry_run, hooks=hooks)
        except StopRunError as exc:
            summary.add_stop(LaneStop(system=exc.system or "slack", stage="alerts", kind=classify(exc).kind, reason=str(exc),
                                      call=exc.call, action=exc.action))
            return
    summary.alerts_sent, summary.alert_episodes = result.alerts_sent, result.alert_episodes
    summary.escalations = result.escalations
    summary.recoveries = getattr(result, "recoveries", 0)
    summary.add_errors(list(result.errors))
    summary.notes.extend(getattr(result, "notes", []))  # e.g. maybe-sent messages settled from Slack's history


def _drift(store: StateStore, settings: Settings, scored, summary: RunSummary, *, record: bool) -> None:
    """Drift warnings of this run (issue 7): a metric dead for every account, one band holding most accounts.

    Recorded per metric in the `drift` table for the report; a failure here never fails the sync.
    """
    try:
        from healthsync.engine.drift import drift_report

        current = scored.scores
        if scored.features is not None and len(scored.features):
            extra = [c for c in scored.features.columns if c not in current.columns or c == "account_id"]
            current = current.merge(scored.features[extra], on="account_id", how="left")
        report = drift_report(None, current, settings.model)
    except Exception as exc:  # noqa: BLE001
        log.warning("drift check failed", exc_info=True)
        summary.warnings.append(f"drift check failed: {type(exc).__name__}")
        return
    summary.drift_warnings = list(report["warnings"])
    if not record:
        return
    rows = []
    for name, m in report["metrics"].items():
        warned = any(w.startswith(f"metric {name}:") for w in report["warnings"])
        rows.append({"run_id": summary.run_id, "metric": name, "psi": m.get("psi"), "warning": warned})
    with store.begin() as conn:
        conn.execute(store.tables["drift"].insert(), rows)


def _report(store: StateStore, settings: Settings, summary: RunSummary, now: datetime) -> None:
    """The portfolio report, when enabled and built (sync.report is another module's job)."""
    if not settings.report.enabled:
        return
    write_report = _optional("healthsync.sync.report", "write_report")
    if write_report is None:
        summary.stages_skipped.append("report (not in this build)")
        return
    try:
        info = write_report(store, settings, settings.report.path, now=now)
    except Exception as exc:  # the report is a by-product: a failure is reported, the sync stands
        log.warning("report failed", exc_info=True)
        summary.add_errors([f"report: {type(exc).__name__}: {exc}"])
        return
    summary.report_path = str(getattr(info, "path", None) or settings.report.path)


# ----------------------------------------------------------------------------- single stages


@contextmanager
def _stage_connections(settings: Settings, ready: dict | None) -> Iterator[tuple[Connections, StateStore, datetime]]:
    conns = connect(settings, ready, allow_embedded=False)
    try:
        store = open_store(conns.state_url)
        if conns.mode == "live":
            refuse_demo_state(store)
        yield conns, store, now_for(conns.ready)
    finally:
        conns.close()


def _stopped_json(out: dict[str, Any], lanes: list[Lane]) -> dict[str, Any]:
    """Status, exit code and `stopped_reason` of a stage command from its lanes."""
    stops = [lane.stop for lane in lanes if lane.stop]
    out["lanes"] = {lane.crm: {"status": "ok" if lane.alive else "stopped", "stopped": lane.stop.to_json() if lane.stop else None}
                    for lane in lanes}
    out["stopped"] = [s.to_json() for s in stops]
    if stops:
        config = [s for s in stops if s.kind in ("configuration", "credentials")]
        out["status"], out["exit_code"] = ("failed", 2) if config else ("stopped", 3)
        out["stopped_reason"] = " | ".join(s.sentence for s in stops)
        out.setdefault("errors", []).extend(f"stopped: {s.sentence}" for s in stops)
    else:
        out.setdefault("stopped_reason", None)
    return out


def pull_stage(settings: Settings, *, ready: dict | None = None) -> dict[str, Any]:
    """`healthsync pull`: CRM changes into the replica; per CRM and object the records stored and deleted.

    One CRM that cannot be reached stops only its own pull (exit 3); the other is pulled.
    """
    with _stage_connections(settings, ready) as (conns, store, now):
        out: dict[str, Any] = {"status": "ok", "exit_code": 0, "pulled": {}, "data_problems": [], "mode": conns.mode,
                               "state": store.shown, "errors": []}
        lanes = make_lanes(conns.connectors)

        def pull_lane(lane: Lane) -> None:
            if lane.run("collect of Bulk jobs", lambda: collect_pending_writes(store, lane.connector, now=now)) is None:
                return
            for object in PULLED_OBJECTS:
                stats = lane.run(f"pull of {object}", lambda object=object: pull_object(store, lane.connector, object, now=now),
                                 fail_fast_on_config=True)
                if stats is None:
                    return
                out["pulled"].setdefault(stats.crm, {})[stats.object] = stats.to_json()
                out["data_problems"].extend(stats.problems[:50])
            _refresh_directory(store, lane, now)

        each_lane(lanes, pull_lane)
    return _stopped_json(out, lanes)


def score_stage(settings: Settings, *, ready: dict | None = None) -> dict[str, Any]:
    """`healthsync score`: score the replica as it is (no pull, nothing written, no history recorded)."""
    with _stage_connections(settings, ready) as (conns, store, now):
        usage = warehouse_stage(settings, conns.ready, now)
        scored = score_replica(store, settings, list(conns.connectors), now, usage=usage)
    top = scored.scores.sort_values("score").head(10) if len(scored.scores) else scored.scores
    return {
        "status": "ok",
        "exit_code": 0,
        "state": store.shown,
        "accounts_scored": len(scored.scores),
        "bands": scored.bands,
        "opportunities_adjusted": len(scored.opportunities),
        "lowest": [
            {"account_id": r["account_id"], "name": r.get("name"), "score": r["score"], "band": r["band"], "drivers": r.get("drivers")}
            for r in top.astype(object).where(top.notna(), None).to_dict("records")
        ],
    }


def _locked_stage(store: StateStore, summary: RunSummary, work: Callable[[_RunLock], None]) -> dict[str, Any]:
    """A stage command that sends: under the same run lease as `healthsync run`, recorded in `runs`."""
    store.start_run(summary.run_id, summary.mode, datetime.fromisoformat(summary.started_at) if summary.started_at else datetime.now())
    lock = _RunLock(store, summary.run_id)
    if not lock.acquire():
        summary.status, summary.stopped_reason = "stopped", lock.busy_reason()
        summary.errors.append(f"stopped: {summary.stopped_reason}")
        _finish(store, summary)
        return summary.to_json()
    try:
        work(lock)
        summary.finish_status()
    except (ConfigurationError, ConfigError) as exc:
        summary.status, summary.failure_kind = "failed", classify(exc).kind
        summary.errors.append(f"configuration error: {exc}")
    except StopRunError as exc:
        summary.add_stop(LaneStop(system=exc.system or "run", stage="run", kind=classify(exc).kind, reason=str(exc),
                                  call=exc.call, action=exc.action))
        summary.finish_status()
    except BaseException as exc:
        summary.status, summary.failure_kind = "failed", "internal"
        summary.errors.append(f"crashed: {type(exc).__name__}")
        _finish(store, summary)
        raise
    finally:
        lock.release()
    _finish(store, summary)
    return summary.to_json()


def sync_stage(settings: Settings, *, ready: dict | None = None, dry_run: bool = False, retry_failed: bool = False) -> dict[str, Any]:
    """`healthsync sync`: write the replica's current scores back (diffed); `retry_failed` sends only the retry queue."""
    with _stage_connections(settings, ready) as (conns, store, now):
        crms = list(conns.connectors)
        usage = warehouse_stage(settings, conns.ready, now)
        scored = score_replica(store, settings, crms, now, usage=usage)
        plan = plan_writes(store, settings, desired_outputs(scored.scores, scored.opportunities, now), crms)
        if retry_failed:
            plan.records = [r for r in plan.records if r.retry]
        if dry_run:
            diff = plan.to_json()
            return {"status": "ok", "exit_code": 0, "dry_run": True, "state": store.shown, **diff}
        run_id = new_run_id(now)
        summary = RunSummary(run_id=run_id, mode=conns.mode, started_at=now.isoformat(), state=store.shown)
        summary.invalid = len(plan.invalid)
        lanes = make_lanes(conns.connectors)

        def work(lock: _RunLock) -> None:
            if not retry_failed:  # the scale these writes use (engine/forecast.py hysteresis)
                store.set_forecast_scale(scored.forecast_scale, run_id, now)
            try:
                each_lane(lanes, lambda lane: _write_back(store, settings, summary, lane, _lane_plan(plan, lane.crm), now=now,
                                                          hooks=lock.wrap(None), on_batch=None))
            finally:
                for lane in lanes:
                    summary.lanes[lane.crm] = {"status": "ok" if lane.alive else "stopped", "stages": list(lane.stages_done),
                                               "stopped": lane.stop.to_json() if lane.stop else None}
                    if lane.stop:
                        summary.add_stop(lane.stop)
            _end_warehouse_stage(summary, usage)

        return _locked_stage(store, summary, work)


def retry_failed(settings: Settings, *, ready: dict | None = None) -> dict[str, Any]:
    """`healthsync sync --retry-failed`: resend only the records in the failed-records queue."""
    return sync_stage(settings, ready=ready, retry_failed=True)


def escalate_stage(settings: Settings, *, ready: dict | None = None) -> dict[str, Any]:
    """`healthsync escalate`: only the SLA/escalation stage (task status read back from the CRM)."""
    run_escalation = _optional("healthsync.sync.escalation", "run_escalation")
    if run_escalation is None:
        raise ConfigurationError("`healthsync escalate` is not part of this build (sync.escalation missing)")
    with _stage_connections(settings, ready) as (conns, store, now):
        if conns.slack is None:
            raise ConfigurationError("Slack is not configured (sources.slack: HEALTHSYNC__SLACK__BOT_TOKEN) and no sandbox given")
        run_id = new_run_id(now)
        summary = RunSummary(run_id=run_id, mode=conns.mode, started_at=now.isoformat(), state=store.shown)
        lanes = make_lanes(conns.connectors)
        by_crm = {lane.crm: lane for lane in lanes}

        def work(lock: _RunLock) -> None:
            owners = load_owners(conns.connectors, on_stop=lambda crm, exc: by_crm[crm].halt("owners", exc))
            live = {lane.crm: lane.connector for lane in alive(lanes)}
            try:
                result = run_escalation(store, settings, conns.slack, live, now, run_id, owners=owners)
            finally:
                for lane in lanes:
                    if lane.stop:
                        summary.add_stop(lane.stop)
            summary.alerts_sent, summary.escalations = result.alerts_sent, result.escalations
            summary.alert_episodes = result.alert_episodes
            summary.recoveries = getattr(result, "recoveries", 0)
            summary.add_errors(list(result.errors))
            summary.notes.extend(getattr(result, "notes", []))

        return _locked_stage(store, summary, work)
