"""Playbook tasks as the CRMs hold them: read back by change, remembered in the state store.

Each run reads only the healthsync tasks modified since the last read (Salesforce
`Task` by `SystemModstamp`, HubSpot tasks by `hs_lastmodifieddate`, both from the
`tasks` cursor), never every open task again. What it reads serves two purposes:

- the episodes learn what happened to their task (completed -> the episode closes,
  a due date moved in the CRM moves the SLA clock): `episode_changes`;
- the OPEN healthsync tasks are kept in the replica (object `tasks`), so that before
  an episode is opened the playbooks stage can adopt a task that is already there
  (`open_tasks`): idempotency is anchored where the effect lands, and a lost or moved
  state database never duplicates a task.

Without a cursor (first run, or the state was lost) every healthsync task is read.
HubSpot's search shows a task only after a lag, so that full read waits out the
connector's `index_lag_s` and reads the recent window again: a task created
seconds before a state loss is seen too (a first run pays that wait once).

The read happens once per run (`read_tasks` is memoised on the state store and the
run's `now`): the playbooks stage reads first, the escalation stage reuses it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd
from sqlalchemy import and_, delete, select, update

from healthsync.config.canonical import as_records
from healthsync.connectors.base import CrmConnector, RetryableError, StopRunError
from healthsync.playbooks.render import plain
from healthsync.sync.state import StateStore, dumps, utc_aware, utc_naive

log = logging.getLogger(__name__)

#: the replica object holding open healthsync tasks, and the cursor of the task read
TASKS = "tasks"


@dataclass
class TaskRead:
    """What one run learned from the CRMs about healthsync tasks."""

    #: crm -> task rows read this run (canonical columns plus `key`), open and completed
    rows: dict[str, list[dict]] = field(default_factory=dict)
    #: crm -> real UTC time before which every task created is in what was read (read start - search lag)
    complete_until: dict[str, datetime] = field(default_factory=dict)
    #: crm -> why its tasks could not be read (its episodes are neither escalated nor given new tasks)
    unreadable: dict[str, str] = field(default_factory=dict)
    #: crms whose read had no cursor (first run or lost state)
    full: set[str] = field(default_factory=set)


_memo: "weakref.WeakKeyDictionary[StateStore, tuple[datetime, TaskRead]]" = weakref.WeakKeyDictionary()
#: the run's lanes read their CRM's tasks at the same time (threads, sync/lanes.py); the memo is merged under it
_memo_lock = threading.Lock()


def read_tasks(store: StateStore, connectors: dict[str, CrmConnector], now: datetime) -> TaskRead:
    """Read healthsync tasks changed since the last read, once per run and CRM (memoised on `store` and `now`).

    A run's lanes call it one CRM each (concurrently) and the escalation stage with every CRM: each CRM
    is read the first time it is asked for, and what was read is shared by the later calls. Each caller
    gets its own copy of what is known so far (another lane's read may land while it iterates).
    """
    with _memo_lock:
        cached = _memo.get(store)
        if cached is None or cached[0] != now:
            cached = _memo[store] = (now, TaskRead())
        shared = cached[1]
    for crm, connector in connectors.items():
        with _memo_lock:
            if crm in shared.complete_until or crm in shared.unreadable:
                continue
        mine = TaskRead()
        try:
            _read_one(store, crm, connector, now, mine)
        except (RetryableError, StopRunError) as exc:
            mine.unreadable[crm] = str(exc)
            log.warning("tasks of %s not read back: %s", crm, exc)
        with _memo_lock:
            shared.rows.update(mine.rows)
            shared.complete_until.update(mine.complete_until)
            shared.unreadable.update(mine.unreadable)
            shared.full.update(mine.full)
    with _memo_lock:
        return TaskRead(rows=dict(shared.rows), complete_until=dict(shared.complete_until),
                        unreadable=dict(shared.unreadable), full=set(shared.full))


def _read_one(store: StateStore, crm: str, connector: CrmConnector, now: datetime, read: TaskRead) -> None:
    since = store.cursor(crm, TASKS)
    lag = float(getattr(connector, "index_lag_s", 0) or 0)
    started = datetime.now(timezone.utc)
    rows = _pull(store, crm, connector, since, now)
    if since is None:
        read.full.add(crm)
        if lag > 0:
            # The state knows no task: a first run, or the state was lost or moved. Tasks made in the
            # last `lag` seconds are not in search yet; wait them out and read the recent window again,
            # so every task made before this run started is known before anything is opened.
            left = (started + timedelta(seconds=lag) - datetime.now(timezone.utc)).total_seconds()
            if left > 0:
                time.sleep(left)
            started = datetime.now(timezone.utc)
            rows += _pull(store, crm, connector, store.cursor(crm, TASKS), now)
    complete_until = started - timedelta(seconds=lag)
    if store.cursor(crm, TASKS) is None:  # nothing found at all: the next read starts here, not from scratch
        with store.begin() as conn:
            store.set_cursor(conn, crm, TASKS, complete_until)
    read.rows[crm] = rows
    read.complete_until[crm] = complete_until


def _pull(store: StateStore, crm: str, connector: CrmConnector, since: datetime | None, now: datetime) -> list[dict]:
    """One incremental read into the replica: open tasks stored, completed ones dropped, cursor moved with them."""
    table = store.tables["replica"]
    out: list[dict] = []
    for page in connector.pull(TASKS, since):
        frame = page.records
        rows = as_records(frame) if frame is not None and len(frame) else []
        rows = [r for r in rows if r.get("task_id") and r.get("key")]
        open_rows = [r for r in rows if r.get("status") != "completed"]
        done_ids = [r["task_id"] for r in rows if r.get("status") == "completed"]
        with store.begin() as conn:
            store.upsert_replica(conn, crm, TASKS, [r["task_id"] for r in open_rows], [dumps(r) for r in open_rows], now)
            for start in range(0, len(done_ids), 400):
                conn.execute(
                    delete(table).where(
                        table.c.crm == crm, table.c.object == TASKS, table.c.record_id.in_(done_ids[start : start + 400])
                    )
                )
            if page.cursor is not None:
                store.set_cursor(conn, crm, TASKS, page.cursor)
        out.extend(rows)
    return out


def open_tasks(store: StateStore, crm: str) -> list[dict]:
    """The open healthsync tasks of one CRM as last read (canonical columns plus `key`)."""
    return store.load_replica(crm, TASKS)


def raw_id(task_id: str) -> str:
    """`sf:00T...` / `hs:123` -> the CRM's own id (what episodes store)."""
    return task_id.split(":", 1)[1] if ":" in task_id else task_id


# ----------------------------------------------------------------------------- episodes


def _aware_ts(value: Any) -> datetime | None:
    value = plain(value)
    if value is None:
        return None
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def effective_due(stored: datetime | None, crm_due: datetime | None) -> datetime | None:
    """The SLA deadline: the CRM's due date wins when someone moved it there.

    Salesforce `Task.ActivityDate` is a date, so it reads back as midnight: the
    same date as the stored deadline means "unchanged" (keep the exact time we
    set); another date means "moved" and the task is due by the end of that day.
    """
    if crm_due is None:
        return stored
    date_only = crm_due.hour == 0 and crm_due.minute == 0 and crm_due.second == 0 and crm_due.microsecond == 0
    if stored is not None:
        if date_only and crm_due.date() == stored.date():
            return stored
        if abs((crm_due - stored).total_seconds()) < 60:
            return stored
    return crm_due + timedelta(days=1) if date_only else crm_due


@dataclass
class EpisodeRows:
    """Every row of the `episodes` table as the database returned them (plain tuples, in `columns` order)."""

    columns: list[str]
    rows: list[tuple]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.columns)

    def changed(self, changes: dict[str, dict]) -> "EpisodeRows":
        """These rows with `episode_changes` applied as `apply_changes` stores them (open episodes only).

        The values are the ones the database would return after the update (naive UTC datetimes,
        strings), so a frame built from them is the frame a fresh read would give.
        """
        real = _real_changes(changes)
        if not real:
            return self
        at = {c: i for i, c in enumerate(self.columns)}
        episode_id, status = at["episode_id"], at["status"]
        out = []
        for row in self.rows:
            change = real.get(row[episode_id])
            if change and row[status] == "open":
                row = list(row)
                for column, value in change.items():
                    row[at[column]] = value
                row = tuple(row)
            out.append(row)
        return EpisodeRows(self.columns, out)


def _real_changes(changes: dict[str, dict]) -> dict[str, dict]:
    """The column changes (markers starting with `_` are not columns), for the episodes that have any."""
    real = {k: {c: v for c, v in ch.items() if not c.startswith("_")} for k, ch in changes.items()}
    return {k: v for k, v in real.items() if v}


def episode_changes(store: StateStore, read: TaskRead, now: datetime, closed_reason: str,
                    episodes: EpisodeRows | None = None) -> dict[str, dict]:
    """episode_id -> column changes for the open episodes whose task was read this run.

    A completed task closes its episode with `closed_reason`; a status or due date
    changed in the CRM is copied. Episodes of an unreadable CRM get `_unreadable`.
    `episodes`: every episode as read earlier in the run (none changed since); else they are read here.
    """
    columns = ("episode_id", "crm", "task_key", "task_id", "task_due_at", "task_status")
    if episodes is None:
        table = store.tables["episodes"]
        with store.engine.connect() as conn:  # the columns compared, as tuples: tens of thousands of open episodes at scale
            open_eps = [dict(zip(columns, r)) for r in conn.execute(
                select(*(table.c[c] for c in columns)).where(and_(table.c.status == "open", table.c.task_id.is_not(None)))
            )]
    else:
        at = [episodes.columns.index(c) for c in columns]
        status, task_id = episodes.columns.index("status"), episodes.columns.index("task_id")
        open_eps = [dict(zip(columns, (r[i] for i in at))) for r in episodes.rows
                    if r[status] == "open" and r[task_id] is not None]
    changes: dict[str, dict] = {}
    by_key: dict[str, dict[str, dict]] = {}
    by_id: dict[str, dict[str, dict]] = {}
    for crm, rows in read.rows.items():
        for r in rows:  # later reads win (rows are in read order)
            if r.get("key"):
                by_key.setdefault(crm, {})[str(r["key"])] = r
            if r.get("task_id"):
                by_id.setdefault(crm, {})[raw_id(str(r["task_id"]))] = r
    for ep in open_eps:
        if ep["crm"] in read.unreadable:
            changes[ep["episode_id"]] = {"_unreadable": True}
            continue
        task = by_key.get(ep["crm"], {}).get(ep["task_key"]) or by_id.get(ep["crm"], {}).get(str(ep["task_id"]))
        if task is None:
            continue  # unchanged since the last read (or not visible yet): keep what we know
        stored_due = utc_aware(ep["task_due_at"])
        due = effective_due(stored_due, _aware_ts(task.get("due_at")))
        status = plain(task.get("status")) or ep["task_status"]
        change: dict[str, Any] = {}
        if status != ep["task_status"]:
            change["task_status"] = status
        if due != stored_due:
            change["task_due_at"] = utc_naive(due)
        if status == "completed":
            done = _aware_ts(task.get("completed_at")) or now
            change.update(status="closed", closed_at=utc_naive(min(done, now)), close_reason=closed_reason)
        if change:
            changes[ep["episode_id"]] = change
    return changes


def apply_changes(store: StateStore, changes: dict[str, dict]) -> None:
    """Store `episode_changes` (markers starting with `_` are not columns)."""
    table = store.tables["episodes"]
    real = _real_changes(changes)
    if not real:
        return
    with store.begin() as conn:
        for episode_id, change in real.items():
            conn.execute(update(table).where(and_(table.c.episode_id == episode_id, table.c.status == "open")).values(**change))
