"""The main job: pull -> score -> forecast -> write-back -> playbooks -> escalate -> record.

`run_cycle` runs it once and returns a `RunSummary`; `pull_stage`,
`score_stage`, `sync_stage` and `escalate_stage` run one stage each for
`healthsync pull | score | sync | escalate` and return JSON-safe dicts.

How a run ends (design.md "Errors", exit codes in sync/summary.py):
- StopRunError / QuotaExhaustedError (quota, auth, CRM unreachable): stop at
  once, keep everything stored so far (cursors, confirmed writes, the retry
  queue), status `stopped`, exit 3; the next run resumes.
- ConfigurationError: status `failed`, exit 2.
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
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, Iterator

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from healthsync.config.settings import Settings
from healthsync.connectors.base import ConfigurationError, HealthsyncError, StopRunError
from healthsync.sync.clock import now_for
from healthsync.sync.connections import Connections, connect, ensure_fields
from healthsync.sync.pull import pull_all
from healthsync.sync.score_job import ScoreResult, record_history, score_replica
from healthsync.sync.state import StateStore, open_store
from healthsync.sync.summary import RunSummary, render_diff
from healthsync.sync.writeback import desired_outputs, execute_plan, plan_writes

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
    """rich progress bars on stderr; silent in JSON mode."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

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
#: several workers). Renewed as the run makes progress, so a killed run blocks the next one
#: for at most this long.
RUN_LOCK = "run_cycle"
RUN_LOCK_TTL_S = 600.0


class _RunLock:
    """The run's lease in the `locks` table, renewed (at most every 30 s) whenever the run makes progress."""

    def __init__(self, store: StateStore, holder: str):
        self.store, self.holder = store, holder
        self._renewed = 0.0

    def acquire(self) -> bool:
        self._renewed = time.monotonic()
        return self.store.acquire_lock(RUN_LOCK, self.holder, RUN_LOCK_TTL_S)

    def renew(self) -> None:
        if time.monotonic() - self._renewed >= 30:
            self.acquire()

    def release(self) -> None:
        self.store.release_lock(RUN_LOCK, self.holder)

    def wrap(self, hooks: Hooks | None) -> Hooks:
        def renewing(point: str) -> None:
            self.renew()
            if hooks is not None:
                hooks(point)

        return renewing


def _hook(hooks: Hooks | None, point: str) -> None:
    if hooks is not None:
        hooks(point)


def load_owners(connectors: dict) -> pd.DataFrame | None:
    """Owners known to the CRMs (email plus whatever the CRM tells: name, role, manager_email)."""
    frames = []
    for connector in connectors.values():
        try:
            for page in connector.pull("owners"):
                if page.records is not None and len(page.records):
                    frames.append(page.records)
        except HealthsyncError as exc:
            if isinstance(exc, StopRunError):
                raise
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
    try:
        conns = connect(settings, ready)
    except ConfigurationError as exc:
        summary = RunSummary(run_id=new_run_id(datetime.now().astimezone()), mode="live" if settings.live else "sandbox", dry_run=dry_run)
        summary.status = "failed"
        summary.errors.append(str(exc))
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
    store = open_store(conns.state_url)
    now = now_for(conns.ready)
    run_id = new_run_id(now)
    summary = RunSummary(run_id=run_id, mode=conns.mode, dry_run=dry_run, started_at=now.isoformat())
    summary.notes.extend(conns.notes)
    if conns.embedded is not None and not json_mode:
        for note in conns.notes:
            Console(stderr=True).print(note)
    store.start_run(run_id, conns.mode, now)
    lock = _RunLock(store, run_id)
    if not lock.acquire():
        summary.status = "stopped"
        summary.stopped_reason = (
            "another healthsync run is in progress on this state database; try again when it has finished "
            f"(a run that died releases it {RUN_LOCK_TTL_S / 60:.0f} minutes after its last progress)"
        )
        summary.errors.append(f"stopped: {summary.stopped_reason}")
        _finish(store, summary)
        return summary
    try:
        created = ensure_fields(conns)
        if created:
            summary.notes.append(f"created healthsync fields in the sandbox: {len(created)}")
        _cycle(settings, conns, store, summary, now=now, dry_run=dry_run, hooks=lock.wrap(hooks), progress=progress,
               on_progress=lock.renew)
        summary.finish_status()
    except StopRunError as exc:
        summary.status = "stopped"
        summary.stopped_reason = str(exc)
        summary.errors.append(f"stopped: {exc}")
        reports = getattr(exc, "reports", None)
        if reports:
            summary.writes = _writes_json(reports)
            for r in reports.values():
                summary.add_errors(r.errors)
    except ConfigurationError as exc:
        summary.status = "failed"
        summary.errors.append(f"configuration error: {exc}")
    except BaseException as exc:
        summary.status = "failed"
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


def _cycle(settings, conns: Connections, store: StateStore, summary: RunSummary, *, now, dry_run, hooks, progress,
           on_progress: Callable[[], None] = lambda: None) -> None:
    connectors = conns.connectors
    crms = list(connectors)

    # pull
    with progress.task("pull", None) as advance:
        stats = pull_all(store, connectors, now=now, on_page=lambda n: (advance(n), on_progress()))
    for s in stats:
        summary.pulled.setdefault(s.crm, {})[s.object] = {"records": s.records, "deleted": s.deleted}
        summary.data_problems += len(s.problems)
        summary.warnings.extend(s.problems[: max(0, 50 - len(summary.warnings))])
    _hook(hooks, "after_pull")

    # score + forecast
    with progress.task("score", None):
        scored = score_replica(store, settings, crms, now)
    summary.accounts_scored = len(scored.scores)
    summary.bands = scored.bands
    summary.opportunities_adjusted = len(scored.opportunities)
    _hook(hooks, "after_score")

    # write-back
    plan = plan_writes(store, settings, desired_outputs(scored.scores, scored.opportunities, now), crms)
    summary.invalid = len(plan.invalid)
    if dry_run:
        summary.diff = plan.to_json()
        summary.writes = {crm: {"records_changed": c["changed"], "unchanged": c["unchanged"], "invalid": c["invalid"],
                                "failed": 0, "api_calls": 0, "retried": 0}
                          for crm, c in summary.diff["by_crm"].items()}
        for crm in crms:
            summary.writes.setdefault(crm, {"records_changed": 0, "unchanged": 0, "invalid": 0, "failed": 0, "api_calls": 0, "retried": 0})
    else:
        with progress.task("write-back", len(plan.records)) as advance:
            reports = execute_plan(store, settings, plan, connectors, run_id=summary.run_id, now=now, hooks=hooks, on_batch=advance)
        summary.writes = _writes_json(reports)
        for r in reports.values():
            summary.add_errors(r.errors)
    _hook(hooks, "after_writeback")

    # playbooks -> CRM tasks
    run_playbooks = _optional("healthsync.sync.playbooks_job", "run_playbooks")
    if run_playbooks is None:
        summary.stages_skipped.append("playbooks (not in this build)")
    else:
        with progress.task("playbooks", None):
            result = run_playbooks(store, settings, scored.scores, connectors, now, summary.run_id, dry_run=dry_run, hooks=hooks)
        summary.tasks_created = result.tasks_created
        summary.episodes_opened = result.episodes_opened
        summary.episodes_closed = result.episodes_closed
        summary.add_errors(list(result.errors))
    _hook(hooks, "after_playbooks")

    # escalation in Slack
    run_escalation = _optional("healthsync.sync.escalation", "run_escalation")
    if run_escalation is None:
        summary.stages_skipped.append("escalation (not in this build)")
    elif conns.slack is None:
        summary.stages_skipped.append("escalation (Slack not configured)")
    else:
        with progress.task("escalation", None):
            owners = load_owners(connectors)
            result = run_escalation(store, settings, conns.slack, connectors, now, summary.run_id,
                                    scores=scored.scores, owners=owners, dry_run=dry_run, hooks=hooks)
        summary.alerts_sent = result.alerts_sent
        summary.escalations = result.escalations
        summary.recoveries = getattr(result, "recoveries", 0)
        summary.add_errors(list(result.errors))
        summary.notes.extend(getattr(result, "notes", []))  # e.g. maybe-sent messages settled from Slack's history
    _hook(hooks, "after_escalation")

    # record
    _hook(hooks, "before_record")
    _drift(store, settings, scored, summary, record=not dry_run)
    if not dry_run:
        record_history(store, settings, scored.scores, summary.run_id, now)
        _report(store, settings, summary, now)


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
        yield conns, open_store(conns.state_url), now_for(conns.ready)
    finally:
        conns.close()


def pull_stage(settings: Settings, *, ready: dict | None = None) -> dict[str, Any]:
    """`healthsync pull`: CRM changes into the replica; per CRM and object the records stored and deleted."""
    with _stage_connections(settings, ready) as (conns, store, now):
        try:
            stats = pull_all(store, conns.connectors, now=now)
        except StopRunError as exc:
            return {"status": "stopped", "exit_code": 3, "errors": [str(exc)]}
    out: dict[str, Any] = {"status": "ok", "exit_code": 0, "pulled": {}, "data_problems": [], "mode": conns.mode}
    for s in stats:
        out["pulled"].setdefault(s.crm, {})[s.object] = s.to_json()
        out["data_problems"].extend(s.problems[:50])
    return out


def score_stage(settings: Settings, *, ready: dict | None = None) -> dict[str, Any]:
    """`healthsync score`: score the replica as it is (no pull, nothing written, no history recorded)."""
    with _stage_connections(settings, ready) as (conns, store, now):
        scored = score_replica(store, settings, list(conns.connectors), now)
    top = scored.scores.sort_values("score").head(10) if len(scored.scores) else scored.scores
    return {
        "status": "ok",
        "exit_code": 0,
        "accounts_scored": len(scored.scores),
        "bands": scored.bands,
        "opportunities_adjusted": len(scored.opportunities),
        "lowest": [
            {"account_id": r["account_id"], "name": r.get("name"), "score": r["score"], "band": r["band"], "drivers": r.get("drivers")}
            for r in top.astype(object).where(top.notna(), None).to_dict("records")
        ],
    }


def sync_stage(settings: Settings, *, ready: dict | None = None, dry_run: bool = False, retry_failed: bool = False) -> dict[str, Any]:
    """`healthsync sync`: write the replica's current scores back (diffed); `retry_failed` sends only the retry queue."""
    with _stage_connections(settings, ready) as (conns, store, now):
        crms = list(conns.connectors)
        scored = score_replica(store, settings, crms, now)
        plan = plan_writes(store, settings, desired_outputs(scored.scores, scored.opportunities, now), crms)
        if retry_failed:
            plan.records = [r for r in plan.records if r.retry]
        if dry_run:
            diff = plan.to_json()
            return {"status": "ok", "exit_code": 0, "dry_run": True, **diff}
        run_id = new_run_id(now)
        store.start_run(run_id, conns.mode, now)
        summary = RunSummary(run_id=run_id, mode=conns.mode, started_at=now.isoformat())
        summary.invalid = len(plan.invalid)
        try:
            reports = execute_plan(store, settings, plan, conns.connectors, run_id=run_id, now=now)
            summary.writes = _writes_json(reports)
            for r in reports.values():
                summary.add_errors(r.errors)
            summary.finish_status()
        except StopRunError as exc:
            summary.status, summary.stopped_reason = "stopped", str(exc)
            summary.errors.append(f"stopped: {exc}")
            if getattr(exc, "reports", None):
                summary.writes = _writes_json(exc.reports)
        _finish(store, summary)
    return summary.to_json()


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
        store.start_run(run_id, conns.mode, now)
        summary = RunSummary(run_id=run_id, mode=conns.mode, started_at=now.isoformat())
        try:
            result = run_escalation(store, settings, conns.slack, conns.connectors, now, run_id, owners=load_owners(conns.connectors))
            summary.alerts_sent, summary.escalations = result.alerts_sent, result.escalations
            summary.recoveries = getattr(result, "recoveries", 0)
            summary.add_errors(list(result.errors))
            summary.notes.extend(getattr(result, "notes", []))
            summary.finish_status()
        except StopRunError as exc:
            summary.status, summary.stopped_reason = "stopped", str(exc)
            summary.errors.append(f"stopped: {exc}")
        _finish(store, summary)
    return summary.to_json()
