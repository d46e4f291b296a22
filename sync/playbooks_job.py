"""The playbooks stage: trigger conditions -> episodes -> exactly one CRM task per episode.

An episode is one stretch of time during which a playbook's condition holds
for an account in one CRM. Its lifecycle:

    condition holds, no open episode   -> episode row recorded (task_status 'pending')
                                          -> TaskSpec created in the CRM (idempotent by task_key)
                                          -> task id stored (task_status 'open')
    condition known to be false         -> closed, reason 'condition_cleared'
    task completed in the CRM           -> closed, reason 'task_completed' (sync.escalation reads it back)

Crash safety: the episode row (with its deterministic `task_key`) is committed
BEFORE the task is created, and connectors create tasks idempotently by that
key, so a crash anywhere leaves either a pending row (the next run creates the
task, or finds it) or a complete one; never a second task for one episode.

A task the owner completed while the condition still holds does not open a new
episode until the condition has cleared once ("re-armed"): completing the task
is the owner saying "handled", and a fresh task every morning would teach them to
ignore healthsync. An unknown condition (missing score, account not scored in
this run) neither opens nor closes anything.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

import numpy as np
import pandas as pd
from sqlalchemy import and_, insert, select, update

from healthsync.connectors.base import CrmConnector, TaskSpec
from healthsync.playbooks.definitions import Playbook, PlaybookSet, load_playbooks
from healthsync.playbooks.render import TemplateProblem, task_context
from healthsync.playbooks.triggers import evaluate, prepare_frame
from healthsync.sync.state import StateStore, utc_aware, utc_naive

CLOSED_TASK_DONE = "task_completed"
CLOSED_CLEARED = "condition_cleared"
#: a task-completed episode whose condition has since cleared: it no longer blocks a new episode
CLOSED_TASK_DONE_REARMED = "task_completed, then condition cleared"


@dataclass
class PlaybookResult:
    tasks_created: int = 0
    episodes_opened: int = 0
    episodes_closed: int = 0
    errors: list[str] = field(default_factory=list)
    planned: list[dict] = field(default_factory=list)  # dry run: the episodes and tasks that would be opened
    notices: list[str] = field(default_factory=list)  # done, with a remark (e.g. owner not a CRM user)

    def to_json(self) -> dict:
        return {
            "tasks_created": self.tasks_created,
            "episodes_opened": self.episodes_opened,
            "episodes_closed": self.episodes_closed,
            "errors": list(self.errors),
        }


def task_key(playbook: str, account_id: str, opened: datetime | str, taken: set[str]) -> str:
    """`<playbook>:<account_id>:<YYYYMMDD>` (+ `.N` if that day already had an episode).

    The playbook comes first because connectors read it back from the key
    (`key.split(':')[0]`). The date (not the run id) keeps the key stable if the
    state database is lost and the same episode is opened again the same day.
    """
    day = opened if isinstance(opened, str) else f"{opened:%Y%m%d}"
    base = f"{playbook}:{account_id}:{day}"
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}.{n}"
    return key


def _episodes(store: StateStore) -> pd.DataFrame:
    t = store.tables["episodes"]
    with store.engine.connect() as conn:
        rows = conn.execute(select(t)).mappings().all()
    return pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in t.columns])


def run_playbooks(
    store: StateStore,
    settings,
    scores: pd.DataFrame,
    connectors: dict[str, CrmConnector],
    now: datetime,
    run_id: str,
    dry_run: bool = False,
    hooks: Callable[[str], None] | None = None,
    playbooks: PlaybookSet | None = None,
) -> PlaybookResult:
    """Open, close and create tasks for episodes; see the module docstring. Raises ConfigError for bad playbooks."""
    pset = playbooks or load_playbooks(settings)
    hook = hooks or (lambda point: None)
    result = PlaybookResult()
    frame = prepare_frame(scores.reset_index(drop=True), now)
    if "crm" not in frame.columns:
        frame["crm"] = frame["account_id"].astype("string").str.split(":").str[0].map({"sf": "salesforce", "hs": "hubspot"})
    existing = _episodes(store)
    taken = set(existing["task_key"].dropna())
    table = store.tables["episodes"]

    to_close: list[tuple[str, str]] = []  # (episode_id, reason)
    rearm: list[str] = []
    seen: list[str] = []
    new_rows: list[dict] = []
    # plain Python lists once (iterating Arrow-backed strings element by element is slow at 1M accounts)
    crms = frame["crm"].astype(object).tolist()
    ids = frame["account_id"].astype(object).tolist()
    owners = frame["owner_email"].astype(object).where(frame["owner_email"].notna(), None).tolist() if "owner_email" in frame.columns else [None] * len(frame)
    segments = frame["segment"].astype(object).where(frame["segment"].notna(), None).tolist() if "segment" in frame.columns else [None] * len(frame)
    bands = frame["band"].astype(object).where(frame["band"].notna(), None).tolist() if "band" in frame.columns else [None] * len(frame)
    opened_n = utc_naive(now)
    day = f"{now:%Y%m%d}"
    for pb in pset.playbooks:
        state = evaluate(pb.condition, frame)
        true_pos = np.flatnonzero(state.fillna(False).to_numpy(dtype=bool)).tolist()
        false_pos = np.flatnonzero((~state).fillna(False).to_numpy(dtype=bool)).tolist()
        true_keys = {(crms[i], ids[i]) for i in true_pos}
        false_keys = {(crms[i], ids[i]) for i in false_pos}
        mine = existing[existing["playbook"] == pb.name]
        open_eps = mine[mine["status"] == "open"]
        blocking = mine[(mine["status"] == "closed") & (mine["close_reason"] == CLOSED_TASK_DONE)]
        for ep in open_eps.itertuples(index=False):  # episodes, not accounts: a handful per run
            key = (ep.crm, ep.account_id)
            if key in false_keys:
                to_close.append((ep.episode_id, CLOSED_CLEARED))
            elif key in true_keys:
                seen.append(ep.episode_id)
        for ep in blocking.itertuples(index=False):
            if (ep.crm, ep.account_id) in false_keys:
                rearm.append(ep.episode_id)
        busy = set(zip(open_eps["crm"], open_eps["account_id"])) | {
            (e.crm, e.account_id) for e in blocking.itertuples(index=False) if e.episode_id not in rearm
        }
        due_by_band = {b: utc_naive(now + timedelta(hours=pb.sla_for(b))) for b, _, _ in pb.band_overrides}
        due_default = utc_naive(now + timedelta(hours=pb.sla_hours))
        for i in true_pos:
            if (crms[i], ids[i]) in busy:
                continue
            key = task_key(pb.name, ids[i], day, taken)
            taken.add(key)
            new_rows.append(
                {
                    "episode_id": key,
                    "crm": crms[i],
                    "account_id": ids[i],
                    "playbook": pb.name,
                    "status": "open",
                    "opened_at": opened_n,
                    "task_key": key,
                    "task_due_at": due_by_band.get(bands[i], due_default),
                    "task_status": "pending",
                    "owner_email": None if owners[i] is None else str(owners[i]),
                    "segment": None if segments[i] is None else str(segments[i]),
                    "last_seen_run": run_id,
                }
            )

    result.episodes_closed = len(to_close)
    result.episodes_opened = len(new_rows)
    if dry_run:
        result.planned = [
            {"episode_id": r["episode_id"], "crm": r["crm"], "account_id": r["account_id"], "playbook": r["playbook"],
             "owner_email": r["owner_email"], "due_at": r["task_due_at"]}
            for r in new_rows
        ]
        return result

    # Record first (one transaction): closings, re-arms, last-seen marks and the new pending episodes.
    now_n = utc_naive(now)
    with store.begin() as conn:
        for episode_id, reason in to_close:
            conn.execute(
                update(table)
                .where(and_(table.c.episode_id == episode_id, table.c.status == "open"))
                .values(status="closed", closed_at=now_n, close_reason=reason, last_seen_run=run_id)
            )
        if rearm:
            conn.execute(update(table).where(table.c.episode_id.in_(rearm)).values(close_reason=CLOSED_TASK_DONE_REARMED))
        if seen:
            conn.execute(update(table).where(table.c.episode_id.in_(seen)).values(last_seen_run=run_id))
        if new_rows:
            conn.execute(insert(table), new_rows)
    hook("after_episodes_recorded")

    _create_pending_tasks(store, pset, frame, connectors, now, result, hook)
    return result


def _create_pending_tasks(store, pset: PlaybookSet, frame: pd.DataFrame, connectors, now, result: PlaybookResult, hook) -> None:
    """Create the CRM task of every open episode that has none yet (this run's, and any a crash left behind)."""
    table = store.tables["episodes"]
    with store.engine.connect() as conn:
        pending = conn.execute(
            select(table).where(and_(table.c.status == "open", table.c.task_id.is_(None)))
        ).mappings().all()
    if not pending:
        return
    rows_by_account = frame.drop_duplicates("account_id").set_index("account_id")
    by_crm: dict[str, list[tuple[dict, TaskSpec]]] = defaultdict(list)
    for ep in pending:
        pb = pset.by_name(ep["playbook"])
        if pb is None:
            continue  # playbook disabled since: the episode waits (it closes when re-enabled and cleared)
        if ep["account_id"] not in rows_by_account.index:
            continue  # not scored this run: retried when it is
        row = rows_by_account.loc[ep["account_id"]].to_dict()
        row["account_id"] = ep["account_id"]
        due = utc_aware(ep["task_due_at"])
        try:
            spec = _task_spec(pb, pset, row, ep, due)
        except TemplateProblem as e:
            result.errors.append(f"playbook {pb.name}, account {ep['account_id']}: {e}")
            continue
        by_crm[ep["crm"]].append((dict(ep), spec))

    for crm, items in by_crm.items():
        connector = connectors.get(crm)
        if connector is None:
            result.errors.append(f"{crm}: {len(items)} playbook task(s) not created: no {crm} connector in this run")
            continue
        outcomes = connector.create_tasks([spec for _, spec in items])
        hook("before_task_record")
        with store.begin() as conn:
            for (ep, spec), outcome in zip(items, outcomes):
                if outcome.ok and outcome.crm_id:
                    # "found": the CRM had the task already (a lost or moved state, another worker), so its Slack
                    # messages may have gone out already and sync.slack_delivery checks before sending them
                    origin = "found" if outcome.message == "already exists" else "created"
                    conn.execute(
                        update(table)
                        .where(table.c.episode_id == ep["episode_id"])
                        .values(task_id=outcome.crm_id, task_status="open", task_origin=origin)
                    )
                    if outcome.message != "already exists":
                        result.tasks_created += 1
                    if outcome.message and outcome.message != "already exists":
                        result.notices.append(f"{crm} task {spec.key}: {outcome.message}")
                else:
                    result.errors.append(
                        f"{crm} task {spec.key}: {outcome.error_code or 'failed'}: {outcome.message or 'not created'}"
                        + (" (retried next run)" if outcome.outcome != "invalid" else "")
                    )
        hook("after_task_create")


def _task_spec(pb: Playbook, pset: PlaybookSet, row: dict, ep: dict, due: datetime) -> TaskSpec:
    sla = round((due - utc_aware(ep["opened_at"])).total_seconds() / 3600, 1) if ep.get("opened_at") else pb.sla_hours
    ctx = task_context(row, playbook_title=pb.title, sla_hours=sla, due_at=due, task_key=ep["task_key"])
    return TaskSpec(
        key=ep["task_key"],
        account_id=ep["account_id"],
        owner_email=ep["owner_email"],
        subject=pset.renderer.render(pb.subject_template, ctx),
        description=pset.renderer.render(pb.description_template, ctx),
        due_at=due,
        priority=pb.priority,  # type: ignore[arg-type]
        playbook=pb.name,
    )
