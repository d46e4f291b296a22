"""The playbooks stage: trigger crossings -> episodes -> at most one CRM task each, at a pace owners can carry.

An episode is one stretch of time during which a playbook's condition holds for
an account in one CRM. Each run:

1. Tasks are read back by change (sync.task_mirror): a task completed in the CRM
   closes its episode (`task_completed`) before anything is decided.
2. Every playbook's condition is evaluated per account and compared with what was
   last known (`playbook_conditions`). A `trigger: crossing` playbook (the seeds')
   fires when the condition turned true since the previous scored run; an account
   evaluated for the first time (first run, new account, lost state) fires only for
   a playbook with `backlog: true` (at-risk, renewal risk), not for expansion. A
   `trigger: state` playbook fires whenever the condition holds.
3. An episode whose condition is known to be false closes (`condition_cleared`).
4. Before an episode is opened, the open healthsync tasks already in the CRM are
   consulted (by account and playbook): one found is adopted, never duplicated.
5. New tasks per owner per UTC day are capped (`playbooks.max_new_tasks_per_owner_per_day`):
   risk playbooks first, then the highest ARR; the rest wait as `queued` episodes and
   go out on the next days (a queued episode whose condition clears closes unsent).
6. Tasks are created for open episodes without one.

Crash safety: the episode row (with its deterministic `task_key`) is committed
before its task is created, and each create request is recorded as an attempt
(`task_status` 'creating', `task_attempted_at`) before it leaves. Salesforce upserts
on the key, so repeating is harmless; HubSpot cannot make the key unique, so an
attempt that got no definite answer is looked up by key once its search index
shows it (after the read-back, or by the connector after its `index_lag_s`) before
anything is created again. Never a second task for one episode.

A task the owner completed while the condition still holds does not open a new
episode until the condition has cleared once ("re-armed"). An unknown condition
(missing score, account not scored in this run) neither opens nor closes anything
and leaves the remembered condition as it was.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from sqlalchemy import and_, bindparam, insert, select, update

from healthsync.connectors.base import (
    MAYBE_CREATED,
    ConfigurationError,
    CrmConnector,
    HealthsyncError,
    RecordResult,
    StopRunError,
    TaskSpec,
)
from healthsync.playbooks.definitions import Playbook, PlaybookSet, load_playbooks
from healthsync.playbooks.render import TemplateProblem, plain, task_context
from healthsync.playbooks.triggers import evaluate, prepare_frame
from healthsync.sync.state import StateStore, utc_aware, utc_naive
from healthsync.sync.task_mirror import (
    EpisodeRows,
    TaskRead,
    apply_changes,
    episode_changes,
    open_tasks,
    raw_id,
    read_tasks,
)

CLOSED_TASK_DONE = "task_completed"
CLOSED_CLEARED = "condition_cleared"
#: a task-completed episode whose condition has since cleared: it no longer blocks a new episode
CLOSED_TASK_DONE_REARMED = "task_completed, then condition cleared"
#: an attempt recorded this long before the read-back's horizon has landed (or never will): the
#: read-back is the answer. Generous: it covers the request's transit and a server's slow processing.
ATTEMPT_SETTLED = timedelta(seconds=60)
#: cap order: risk first (priority), then ARR
_PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}


@dataclass
class PlaybookResult:
    tasks_created: int = 0
    tasks_adopted: int = 0  # open healthsync tasks found in the CRM and taken over instead of created
    tasks_queued: int = 0  # episodes waiting for room under the per-owner daily cap (after this run)
    episodes_opened: int = 0
    episodes_closed: int = 0
    errors: list[str] = field(default_factory=list)
    planned: list[dict] = field(default_factory=list)  # dry run: the episodes and tasks that would be opened
    notices: list[str] = field(default_factory=list)  # done, with a remark (e.g. owner not a CRM user)
    queued_by_owner: dict[str, int] = field(default_factory=dict)  # owner email (lower) -> queued episodes

    def to_json(self) -> dict:
        return {
            "tasks_created": self.tasks_created,
            "tasks_adopted": self.tasks_adopted,
            "tasks_queued": self.tasks_queued,
            "episodes_opened": self.episodes_opened,
            "episodes_closed": self.episodes_closed,
            "errors": list(self.errors),
        }


def task_key(playbook: str, account_id: str, opened: datetime | str, taken: set[str]) -> str:
    """`<playbook>:<account_id>:<YYYYMMDD>` (+ `.N` if that day already had an episode).

    The playbook comes first because connectors read it back from the key
    (`key.split(':')[0]`), and the account follows (HubSpot tasks are matched to
    their account through it). The date (not the run id) keeps the key stable if
    the state database is lost and the same episode is opened again the same day.
    """
    day = opened if isinstance(opened, str) else f"{opened:%Y%m%d}"
    base = f"{playbook}:{account_id}:{day}"
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}.{n}"
    return key


def _episode_rows(store: StateStore) -> EpisodeRows:
    # plain tuples, not mappings: every episode is read when a run plans (~100,000 at 100,000 accounts per CRM)
    t = store.tables["episodes"]
    with store.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(select(t)).all()]
    return EpisodeRows([c.name for c in t.columns], rows)


def _episodes(store: StateStore) -> pd.DataFrame:
    return _episode_rows(store).frame()


def _conditions(store: StateStore) -> dict[tuple[str, str, str], bool]:
    # tuple unpacking, not attribute access per row: 600,000 rows at 100,000 accounts per CRM
    t = store.tables["playbook_conditions"]
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.c.crm, t.c.account_id, t.c.playbook, t.c.holds)).all()
    return {(crm, account_id, playbook): bool(holds) for crm, account_id, playbook, holds in rows}


class PlanningReads:
    """The planner's two big state reads (every episode, every remembered condition), made beside the pull.

    At 100,000 accounts per CRM they are ~100,000 episodes and 600,000 conditions, seconds of reading
    between the scoring and the first task. Nothing a run does before it plans changes them: only the
    plan itself records episodes and conditions (`_record`), and the read-back's changes to episodes
    (`task_mirror.apply_changes`) are applied to what was read here as they are to the state. So a run
    starts this read when its pull starts (sync/run.py) and `plan_playbooks` takes it. Read-only; a read
    that failed is a read not made: the plan reads the state itself.
    """

    def __init__(self, store: StateStore):
        self.store = store
        self._read: tuple[EpisodeRows, dict[tuple[str, str, str], bool]] | None = None
        self._thread = threading.Thread(target=self._run, name="planning reads", daemon=True)

    def start(self) -> "PlanningReads":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._read = (_episode_rows(self.store), _conditions(self.store))
        except Exception:  # noqa: BLE001 - the plan reads the state itself
            log.warning("episodes and playbook conditions not read ahead", exc_info=True)

    def take(self) -> tuple[EpisodeRows, dict[tuple[str, str, str], bool]] | None:
        """What was read (once: a second plan of the run must read the state its first plan recorded)."""
        self._thread.join()
        read, self._read = self._read, None
        return read


def _column(frame: pd.DataFrame, name: str) -> list:
    if name not in frame.columns:
        return [None] * len(frame)
    return frame[name].astype(object).where(frame[name].notna(), None).tolist()


def _owner_key(email) -> str:
    return str(email).strip().lower() if email else ""


#: one caller at a time plans and records episodes (the per-owner daily cap spans both CRMs)
_PLANNING = threading.Lock()

log = logging.getLogger(__name__)


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
    crms: Iterable[str] | None = None,
) -> PlaybookResult:
    """Open, close, queue and create tasks for episodes; see the module docstring. Raises ConfigError for bad playbooks.

    `crms`: act on these CRMs' episodes and tasks only, while planning on every account of `scores`,
    so the per-owner daily cap orders all CRMs' new tasks the same way whichever CRMs are acted on.
    """
    planned = plan_playbooks(store, settings, scores, connectors, now, run_id, dry_run=dry_run, hooks=hooks,
                             playbooks=playbooks, crms=crms)
    if dry_run:
        return planned.result
    made = create_planned_tasks(store, planned, connectors, now, hooks=hooks)
    result = planned.result
    result.tasks_created += made.tasks_created
    result.episodes_closed += made.episodes_closed
    result.errors += made.errors
    result.notices += made.notices
    return result


@dataclass
class PlannedPlaybooks:
    """The episodes a run planned and recorded (`plan_playbooks`), ready for each CRM's task creation."""

    result: PlaybookResult  # episodes opened, closed, adopted and queued; the read-back's errors
    pset: PlaybookSet
    frame: pd.DataFrame  # the scored accounts, as the task templates read them
    read: TaskRead  # the run's task read-back
    known: dict[str, dict[str, dict]]  # crm -> task key -> the task as the CRM last showed it
    only: set[str] | None  # the CRMs acted on (None: every CRM)


def plan_playbooks(
    store: StateStore,
    settings,
    scores: pd.DataFrame,
    connectors: dict[str, CrmConnector],
    now: datetime,
    run_id: str,
    dry_run: bool = False,
    hooks: Callable[[str], None] | None = None,
    playbooks: PlaybookSet | None = None,
    crms: Iterable[str] | None = None,
    prefetched: PlanningReads | None = None,
) -> PlannedPlaybooks:
    """Steps 1 and 2 of the module docstring: the read-back applied, the episodes planned and recorded.

    A run plans once for all its live CRMs (sync/run.py), on a thread of its own while the write-backs
    send, and each CRM's lane then creates its tasks (`create_planned_tasks`). Planned once, the per-owner
    daily cap orders both CRMs' new tasks in one pass; planned per lane, every episode and every
    remembered condition (600,000 at 100,000 accounts per CRM) were read twice, one lane after the other.
    `prefetched`: those two reads, made beside the run's pull (`PlanningReads`).
    """
    only = set(crms) if crms is not None else None
    pset = playbooks or load_playbooks(settings)
    hook = hooks or (lambda point: None)
    result = PlaybookResult()
    frame = prepare_frame(scores.reset_index(drop=True), now)
    if "crm" not in frame.columns:
        frame["crm"] = frame["account_id"].astype("string").str.split(":").str[0].map({"sf": "salesforce", "hs": "hubspot"})

    # 1. what happened to the tasks since the last run (completed ones close their episode first)
    read = read_tasks(store, connectors, now)
    for crm, why in read.unreadable.items():
        if crm not in connectors:
            continue  # another caller's, reported there
        result.errors.append(f"{crm}: could not read playbook tasks back ({why}); no task created there this run")
    ahead = None if prefetched is None else prefetched.take()
    changes = episode_changes(store, read, now, CLOSED_TASK_DONE, episodes=None if ahead is None else ahead[0])
    done = sum(1 for c in changes.values() if c.get("status") == "closed")
    if not dry_run:
        apply_changes(store, changes)
    result.episodes_closed += done

    # planning and recording are serialized between concurrent callers: the one that plans second sees the
    # first one's episodes, so an owner's daily cap holds across both CRMs
    with _PLANNING:
        if ahead is None:
            rows = _episode_rows(store)
            if dry_run:  # the read-back changes are not stored in a dry run; plan on them anyway
                rows = rows.changed(changes)
        else:  # read before apply_changes: the changes applied here as there (stored or, in a dry run, not)
            rows = ahead[0].changed(changes)
        existing = rows.frame()
        # open tasks as last read, for every CRM planned on (a CRM not acted on: as its last read left them)
        planned_crms = set(frame["crm"].dropna().astype(str)) | set(connectors)
        mirror = {crm: open_tasks(store, crm) for crm in planned_crms if crm not in read.unreadable}
        previous = _conditions(store) if ahead is None else ahead[1]
        cap = int(getattr(settings.playbooks, "max_new_tasks_per_owner_per_day", 10))

        plan = _plan(pset, frame, existing, previous, mirror, now, run_id, cap)
        if only is not None:
            _restrict(plan, only, existing)
        result.episodes_closed += len(plan.to_close)
        result.episodes_opened = len(plan.new_rows) + len(plan.reopen)
        result.tasks_adopted = sum(1 for r in plan.new_rows if r.get("task_id")) + len(plan.reopen)
        result.tasks_queued = plan.queued_total
        result.queued_by_owner = dict(plan.queued_by_owner)
        if dry_run:
            result.planned = [
                {"episode_id": r["episode_id"], "crm": r["crm"], "account_id": r["account_id"], "playbook": r["playbook"],
                 "owner_email": r["owner_email"], "due_at": r["task_due_at"], "status": r["status"],
                 "adopted_task_id": r.get("task_id")}
                for r in plan.new_rows
            ]
        else:
            # 2. record first (one transaction): closings, re-arms, conditions, new / adopted / released episodes
            _record(store, plan, now, run_id)
    if not dry_run:
        hook("after_episodes_recorded")

    known = {crm: {str(r["key"]): r for r in rows} for crm, rows in mirror.items()}
    for crm, rows in read.rows.items():
        for r in rows:
            if r.get("key"):
                known.setdefault(crm, {})[str(r["key"])] = r
    return PlannedPlaybooks(result=result, pset=pset, frame=frame, read=read, known=known, only=only)


def create_planned_tasks(store: StateStore, planned: PlannedPlaybooks, connectors: dict[str, CrmConnector], now: datetime,
                         hooks: Callable[[str], None] | None = None, crms: Iterable[str] | None = None) -> PlaybookResult:
    """Step 3: a task for every open episode without one (this run's, and any a crash left behind).

    `crms`: only these CRMs' episodes (a run's lane creates its own CRM's tasks), within those planned on.
    Only `tasks_created`, `episodes_closed` (tasks found already completed), `errors` and `notices` are set.
    """
    result = PlaybookResult()
    only = planned.only
    if crms is not None:
        only = set(crms) if only is None else only & set(crms)
    _create_pending_tasks(store, planned.pset, planned.frame, connectors, planned.read, planned.known, now, result,
                          hooks or (lambda point: None), only)
    return result


# ----------------------------------------------------------------------------- planning


@dataclass
class _Plan:
    to_close: list[tuple[str, str]] = field(default_factory=list)  # (episode_id, reason)
    rearm: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    new_rows: list[dict] = field(default_factory=list)  # status open (task created later or adopted) or queued
    reopen: list[dict] = field(default_factory=list)  # closed episodes whose CRM task is still open: adopted again
    released: list[dict] = field(default_factory=list)  # queued episodes going out now: episode_id + new values
    conditions: list[dict] = field(default_factory=list)  # rows to upsert into playbook_conditions
    queued_total: int = 0
    queued_by_owner: dict[str, int] = field(default_factory=dict)
    queued_items: list[tuple[str, str]] = field(default_factory=list)  # (crm, owner) of every queued episode


def _restrict(plan: _Plan, only: set[str], existing: pd.DataFrame) -> None:
    """Keep what the plan does to the episodes of the CRMs in `only` (the plan itself covered every CRM)."""
    mine = set(existing.loc[existing["crm"].isin(only), "episode_id"])
    plan.to_close = [(e, reason) for e, reason in plan.to_close if e in mine]
    plan.rearm = [e for e in plan.rearm if e in mine]
    plan.seen = [e for e in plan.seen if e in mine]
    plan.new_rows = [r for r in plan.new_rows if r["crm"] in only]
    plan.reopen = [r for r in plan.reopen if r["episode_id"] in mine]
    plan.released = [r for r in plan.released if r["episode_id"] in mine]
    plan.conditions = [c for c in plan.conditions if c["crm"] in only]
    plan.queued_items = [(crm, owner) for crm, owner in plan.queued_items if crm in only]
    plan.queued_by_owner = {}
    for _, owner in plan.queued_items:
        plan.queued_by_owner[owner] = plan.queued_by_owner.get(owner, 0) + 1
    plan.queued_total = len(plan.queued_items)


def _plan(pset: PlaybookSet, frame: pd.DataFrame, existing: pd.DataFrame, previous: dict, mirror: dict[str, list[dict]],
          now: datetime, run_id: str, cap: int) -> _Plan:
    plan = _Plan()
    taken = set(existing["task_key"].dropna())
    live = existing[existing["status"].isin(["open", "queued"])]
    linked_live = {(c, str(t)) for c, t in zip(live["crm"], live["task_id"]) if t is not None and not pd.isna(t)}
    closed_eps = existing[existing["status"] == "closed"]
    by_key_closed = dict(zip(closed_eps["task_key"], closed_eps["episode_id"]))  # task key -> its closed episode
    # open healthsync tasks in the CRMs that no live episode tracks, by (crm, account, playbook)
    adoptable: dict[tuple[str, str, str], dict] = {}
    for crm, rows in mirror.items():
        for r in sorted(rows, key=lambda r: str(r.get("created_at") or "")):
            tid = raw_id(str(r["task_id"]))
            if (crm, tid) in linked_live:
                continue
            key = str(r["key"])
            taken.add(key)
            # the account and playbook healthsync put in the key (a task moved to another record stays its own)
            playbook, _, rest = key.partition(":")
            adoptable.setdefault((crm, rest.rsplit(":", 1)[0], playbook), {**r, "task_id": tid})

    crms = _column(frame, "crm")
    ids = _column(frame, "account_id")
    owners = _column(frame, "owner_email")
    segments = _column(frame, "segment")
    bands = _column(frame, "band")
    arrs = pd.to_numeric(frame["arr"], errors="coerce").fillna(0.0).tolist() if "arr" in frame.columns else [0.0] * len(frame)
    row_of = {(c, a): i for i, (c, a) in enumerate(zip(crms, ids))}
    opened_n = utc_naive(now)
    day = f"{now:%Y%m%d}"
    candidates: list[dict] = []  # new episodes that need a task (subject to the cap)

    for pb in pset.playbooks:
        state = evaluate(pb.condition, frame)
        true_pos = np.flatnonzero(state.fillna(False).to_numpy(dtype=bool)).tolist()
        false_pos = np.flatnonzero((~state).fillna(False).to_numpy(dtype=bool)).tolist()
        true_keys = {(crms[i], ids[i]) for i in true_pos}
        false_keys = {(crms[i], ids[i]) for i in false_pos}
        for positions, holds in ((true_pos, True), (false_pos, False)):
            for i in positions:
                before = previous.get((crms[i], ids[i], pb.name))
                if before is not holds:
                    plan.conditions.append({"crm": crms[i], "account_id": ids[i], "playbook": pb.name, "holds": holds,
                                            "known": before is not None})

        mine = existing[existing["playbook"] == pb.name]
        live_eps = mine[mine["status"].isin(["open", "queued"])]
        blocking = mine[(mine["status"] == "closed") & (mine["close_reason"] == CLOSED_TASK_DONE)]
        for ep in live_eps.itertuples(index=False):  # episodes, not accounts: a handful per run
            key = (ep.crm, ep.account_id)
            if key in false_keys:
                plan.to_close.append((ep.episode_id, CLOSED_CLEARED))
            elif key in true_keys:
                plan.seen.append(ep.episode_id)
        rearmed = set()
        for ep in blocking.itertuples(index=False):
            if (ep.crm, ep.account_id) in false_keys:
                plan.rearm.append(ep.episode_id)
                rearmed.add(ep.episode_id)
        busy = set(zip(live_eps["crm"], live_eps["account_id"])) | {
            (e.crm, e.account_id) for e in blocking.itertuples(index=False) if e.episode_id not in rearmed
        }
        for i in true_pos:
            if (crms[i], ids[i]) in busy:
                continue
            if pb.trigger == "crossing":
                before = previous.get((crms[i], ids[i], pb.name))
                if before is True or (before is None and not pb.backlog):
                    continue
            task = adoptable.pop((crms[i], ids[i], pb.name), None)
            if task is not None:
                if task["key"] in by_key_closed:  # its own episode was closed while the task stayed open
                    plan.reopen.append({"episode_id": by_key_closed[task["key"]], "task_id": task["task_id"]})
                    continue
                due = _aware(task.get("due_at")) or now + timedelta(hours=pb.sla_for(bands[i]))
                row = _row(pb, crms[i], ids[i], owners[i], segments[i], str(task["key"]), opened_n, run_id,
                           status="open", task_id=task["task_id"], due=utc_naive(due), task_status="open")
                # made on the day it was created: a task made today (before a state loss) uses today's room
                row["released_at"] = utc_naive(_aware(task.get("created_at")))
                plan.new_rows.append(row)
                continue
            key = task_key(pb.name, ids[i], day, taken)
            taken.add(key)
            row = _row(pb, crms[i], ids[i], owners[i], segments[i], key, opened_n, run_id, status="queued")
            candidates.append({"row": row, "pb": pb, "band": bands[i], "arr": arrs[i], "owner": owners[i], "existing": False})

    # queued episodes from earlier runs compete with today's for the owner's room
    closing = {e for e, _ in plan.to_close}
    pbs = {p.name: p for p in pset.playbooks}
    queued = existing[existing["status"] == "queued"]
    for episode_id, crm, account_id, playbook, owner, opened in zip(
        queued["episode_id"], queued["crm"], queued["account_id"], queued["playbook"], queued["owner_email"], queued["opened_at"]
    ):
        if episode_id in closing or playbook not in pbs:
            continue
        i = row_of.get((crm, account_id))
        if i is None:  # not scored this run: waits (and does not count)
            continue
        row = {"episode_id": episode_id, "opened_at": opened, "crm": crm}
        candidates.append({"row": row, "pb": pbs[playbook], "band": bands[i], "arr": arrs[i], "owner": owners[i] or owner, "existing": True})

    released_today: dict[str, int] = defaultdict(int)
    today = now.astimezone(timezone.utc).date() if now.tzinfo else now.date()
    for owner, released in zip(existing["owner_email"], existing["released_at"]):
        if released is not None and not pd.isna(released) and pd.Timestamp(released).date() == today:
            released_today[_owner_key(owner)] += 1
    for r in plan.new_rows:  # tasks adopted from the CRM count on the day they were made (a state lost today)
        made = r.get("released_at")
        if r.get("task_id") and made is not None and pd.Timestamp(made).date() == today:
            released_today[_owner_key(r["owner_email"])] += 1
    by_owner: dict[str, list[dict]] = defaultdict(list)
    for c in candidates:
        by_owner[_owner_key(c["owner"])].append(c)
    for owner, items in by_owner.items():
        items.sort(key=lambda c: (_PRIORITY_RANK.get(c["pb"].priority, 1), -float(c["arr"] or 0.0),
                                  str(c["row"].get("opened_at") or ""), c["row"]["episode_id"]))
        room = max(0, cap - released_today[owner])
        for n, c in enumerate(items):
            go = n < room
            row = c["row"]
            if go:
                due = utc_naive(now + timedelta(hours=c["pb"].sla_for(c["band"])))
                values = {"status": "open", "released_at": opened_n, "task_due_at": due, "task_status": "pending",
                          "owner_email": None if c["owner"] is None else str(c["owner"])}
                if c["existing"]:
                    plan.released.append({"episode_id": row["episode_id"], **values})
                else:
                    row.update(values)
                    plan.new_rows.append(row)
            else:
                plan.queued_by_owner[owner] = plan.queued_by_owner.get(owner, 0) + 1
                plan.queued_items.append((row["crm"], owner))
                if not c["existing"]:
                    plan.new_rows.append(row)
    plan.queued_total = sum(plan.queued_by_owner.values())
    return plan


def _row(pb: Playbook, crm, account_id, owner, segment, key: str, opened_n: datetime, run_id: str, *, status: str,
         task_id: str | None = None, due: datetime | None = None, task_status: str = "pending") -> dict:
    return {
        "episode_id": key,
        "crm": crm,
        "account_id": account_id,
        "playbook": pb.name,
        "status": status,
        "opened_at": opened_n,
        "task_key": key,
        "task_id": task_id,
        "task_due_at": due,
        "task_status": task_status,
        "owner_email": None if owner is None else str(owner),
        "segment": None if segment is None else str(segment),
        "last_seen_run": run_id,
        "task_attempted_at": None,
        "released_at": None,
        "task_origin": "found" if task_id else None,  # adopted from the CRM: another state may have alerted it
    }


def _aware(value) -> datetime | None:
    value = plain(value)
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def _record(store: StateStore, plan: _Plan, now: datetime, run_id: str) -> None:
    table = store.tables["episodes"]
    cond = store.tables["playbook_conditions"]
    now_n = utc_naive(now)
    with store.begin() as conn:
        by_reason: dict[str, list[str]] = defaultdict(list)
        for episode_id, reason in plan.to_close:
            by_reason[reason].append(episode_id)
        for reason, closing in by_reason.items():
            for start in range(0, len(closing), 400):
                conn.execute(
                    update(table)
                    .where(and_(table.c.episode_id.in_(closing[start : start + 400]), table.c.status.in_(["open", "queued"])))
                    .values(status="closed", closed_at=now_n, close_reason=reason, last_seen_run=run_id)
                )
        if plan.rearm:
            conn.execute(update(table).where(table.c.episode_id.in_(plan.rearm)).values(close_reason=CLOSED_TASK_DONE_REARMED))
        if plan.seen:
            for start in range(0, len(plan.seen), 400):
                conn.execute(update(table).where(table.c.episode_id.in_(plan.seen[start : start + 400])).values(last_seen_run=run_id))
        for r in plan.reopen:
            conn.execute(
                update(table).where(table.c.episode_id == r["episode_id"]).values(
                    status="open", closed_at=None, close_reason=None, task_id=r["task_id"], task_status="open", last_seen_run=run_id
                )
            )
        if plan.released:  # one statement, executed for every released episode
            conn.execute(
                update(table)
                .where(and_(table.c.episode_id == bindparam("b_episode_id"), table.c.status == "queued"))
                .values(status="open", released_at=bindparam("b_released_at"), task_due_at=bindparam("b_task_due_at"),
                        task_status="pending", owner_email=bindparam("b_owner_email")),
                [{f"b_{k}": v for k, v in r.items() if k not in ("status", "task_status")} for r in plan.released],
            )
        if plan.new_rows:
            conn.execute(insert(table), plan.new_rows)
        # the conditions that changed (updated by primary key) and those seen for the first time (inserted)
        changed = [{"b_crm": c["crm"], "b_account_id": c["account_id"], "b_playbook": c["playbook"], "b_holds": c["holds"]}
                    for c in plan.conditions if c["known"]]
        if changed:
            conn.execute(
                update(cond)
                .where(and_(cond.c.crm == bindparam("b_crm"), cond.c.account_id == bindparam("b_account_id"),
                            cond.c.playbook == bindparam("b_playbook")))
                .values(holds=bindparam("b_holds"), run_id=run_id, changed_at=now_n),
                changed,
            )
        new = [{k: c[k] for k in ("crm", "account_id", "playbook", "holds")} | {"run_id": run_id, "changed_at": now_n}
               for c in plan.conditions if not c["known"]]
        if new:
            conn.execute(insert(cond), new)


# ----------------------------------------------------------------------------- creating tasks


def _create_pending_tasks(store, pset: PlaybookSet, frame: pd.DataFrame, connectors, read, known: dict[str, dict[str, dict]], now,
                          result: PlaybookResult, hook, only: set[str] | None = None) -> None:
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
        if only is not None and ep["crm"] not in only:
            continue  # another lane's
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
        if crm in read.unreadable:
            continue  # reported by run_playbooks: without the read-back a task might already exist
        _create_for_crm(store, crm, connector, items, read, known.get(crm, {}), now, result, hook)
        hook("after_task_create")


def _create_for_crm(store, crm: str, connector: CrmConnector, items: list[tuple[dict, TaskSpec]], read, known: dict[str, dict],
                    now: datetime, result: PlaybookResult, hook) -> None:
    """Create one CRM's tasks: keys the read-back already shows are taken, not sent; attempts are recorded first."""
    table = store.tables["episodes"]
    by_key = {spec.key: ep for ep, spec in items}
    complete_until = read.complete_until.get(crm)
    found: list[RecordResult] = []
    specs: list[TaskSpec] = []
    for ep, spec in items:
        task = known.get(spec.key)
        if task is not None:  # created before (a crash, an unanswered create): the read-back shows it
            if task.get("status") == "completed":  # and its owner already completed it
                with store.begin() as conn:
                    conn.execute(update(table).where(table.c.task_key == spec.key).values(
                        task_id=raw_id(str(task["task_id"])), task_status="completed", task_attempted_at=None, task_origin="found",
                        status="closed", closed_at=utc_naive(now), close_reason=CLOSED_TASK_DONE))
                result.episodes_closed += 1
                continue
            found.append(RecordResult(spec.key, "ok", crm_id=raw_id(str(task["task_id"])), message="already exists"))
            continue
        attempted = utc_aware(ep.get("task_attempted_at"))
        if attempted is not None and complete_until is not None and attempted + ATTEMPT_SETTLED <= complete_until:
            attempted = None  # the read-back would have shown it: that create never landed
        spec.attempted_at = attempted
        specs.append(spec)

    def before_send(keys: list[str]) -> None:
        sent = utc_naive(datetime.now(timezone.utc))  # real time: compared with the CRM's search lag
        with store.begin() as conn:
            conn.execute(update(table).where(table.c.task_key.in_(keys)).values(task_status="creating", task_attempted_at=sent))

    def after_chunk(outcomes: list[RecordResult]) -> None:
        hook("before_task_record")
        with store.begin() as conn:
            for outcome in outcomes:
                ep = by_key.get(outcome.record_id)
                if ep is None:
                    continue
                key = ep["task_key"]
                if outcome.ok and outcome.crm_id:
                    # "found": the CRM had the task already (a lost or moved state, another worker, an earlier attempt),
                    # so its Slack messages may have gone out already and sync.slack_delivery checks before sending them
                    origin = "found" if outcome.message == "already exists" else "created"
                    conn.execute(update(table).where(table.c.task_key == key).values(
                        task_id=outcome.crm_id, task_status="open", task_attempted_at=None, task_origin=origin))
                    if outcome.message != "already exists":
                        result.tasks_created += 1
                    if outcome.message and outcome.message != "already exists":
                        result.notices.append(f"{crm} task {key}: {outcome.message}")
                    continue
                if outcome.error_code == MAYBE_CREATED:  # maybe there: looked up by key before any new create
                    conn.execute(update(table).where(table.c.task_key == key).values(task_attempted_at=utc_naive(datetime.now(timezone.utc))))
                else:  # a definite "no": nothing exists, try again from scratch
                    conn.execute(update(table).where(table.c.task_key == key).values(task_status="pending", task_attempted_at=None))
                result.errors.append(
                    f"{crm} task {key}: {outcome.error_code or 'failed'}: {outcome.message or 'not created'}"
                    + (" (retried next run)" if outcome.outcome != "invalid" else "")
                )

    if found:
        after_chunk(found)
    if not specs:
        return
    try:
        outcomes = connector.create_tasks(specs, before_send=before_send, after_chunk=after_chunk)
    except (StopRunError, ConfigurationError):
        raise
    except HealthsyncError as exc:  # retries exhausted, a refused request: what was settled is recorded
        result.errors.append(f"{crm}: playbook tasks not all created ({exc}); the rest are retried next run")
        return
    for outcome in outcomes:  # invalid tasks never reach after_chunk (nothing was sent for them)
        if outcome.outcome == "invalid":
            result.errors.append(f"{crm} task {outcome.record_id}: {outcome.error_code}: {outcome.message}")


def _task_spec(pb: Playbook, pset: PlaybookSet, row: dict, ep: dict, due: datetime) -> TaskSpec:
    start = ep.get("released_at") or ep.get("opened_at")
    sla = round((due - utc_aware(start)).total_seconds() / 3600, 1) if start else pb.sla_hours
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
