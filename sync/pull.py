"""Pull: CRM changes since the last cursor -> the state replica.

At-least-once and never skipping: each page's records and its cursor are
stored in ONE transaction, so a crash leaves either both or neither, and the
next run resumes from the last stored page. Connectors read with `>=` and a
lookback window, so records seen twice are simply stored again (by id).

A connector that reports the modification time of our own writes (HubSpot) gets
them back as `OwnWrites`, with a check against the replica, and leaves out the
records whose only change since the last read is that write.

Deleted (Salesforce `IsDeleted`) and archived (HubSpot) records arrive as
`Page.deleted_ids`: they become tombstones in the replica (so they are no
longer scored or written), and their `pushed` and `failed_records` rows are
cleared (see `StateStore.mark_deleted` for why).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Sequence

import pandas as pd

from healthsync.config.canonical import SPECS, as_records
from healthsync.connectors.base import CrmConnector, OwnWrites
from healthsync.sync.state import StateStore, dumps

#: own writes older than the cursor by more than this are not handed to the connector (its lookback is shorter)
OWN_WRITES_MARGIN = timedelta(days=1)

log = logging.getLogger(__name__)

#: The canonical objects the main job replicates (tasks are read back by escalation on demand).
PULLED_OBJECTS = ("accounts", "opportunities", "tickets")


@dataclass
class PullStats:
    """What one CRM object's pull stored."""

    crm: str
    object: str
    since: datetime | None
    records: int = 0
    deleted: int = 0
    pages: int = 0
    cursor: datetime | None = None
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "crm": self.crm,
            "object": self.object,
            "since": self.since.isoformat() if self.since else None,
            "records": self.records,
            "deleted": self.deleted,
            "pages": self.pages,
            "cursor": self.cursor.isoformat() if self.cursor else None,
            "problems": len(self.problems),
        }


def pull_object(
    store: StateStore,
    connector: CrmConnector,
    object: str,
    *,
    now: datetime,
    on_page: Callable[[int], None] | None = None,
    **pull_options,
) -> PullStats:
    """Pull one object incrementally into the replica; the cursor moves only with its records.

    `pull_options` go to `connector.pull` (e.g. `deletions=False` for the write-back's guard sweeps).
    """
    crm = connector.name
    key = SPECS[object].key
    since = store.cursor(crm, object)
    stats = PullStats(crm, object, since)
    kwargs = dict(pull_options)
    if since is not None:
        stamps = store.own_write_stamps(crm, object, since - OWN_WRITES_MARGIN)
        if stamps:
            kwargs["own_writes"] = OwnWrites(stamps, lambda frame, ignore: _unchanged(store, crm, object, frame, ignore))
    for page in connector.pull(object, since, **kwargs):
        frame = page.records
        ids: list[str] = []
        data: list[str] = []
        if frame is not None and len(frame):
            frame = frame.dropna(subset=[key]) if key in frame.columns else frame.iloc[0:0]
            ids = frame[key].astype(str).tolist()
            data = [dumps(r) for r in as_records(frame)]
        with store.begin() as conn:
            store.upsert_replica(conn, crm, object, ids, data, now)
            deleted = list(page.deleted_ids)
            if page.live_ids is not None:  # a full reconcile: what the CRM no longer lists was deleted
                deleted += sorted(store.live_ids(crm, object) - set(page.live_ids) - set(ids))
            if deleted:
                stats.deleted += store.mark_deleted(conn, crm, object, deleted, now)
            if page.cursor is not None:
                store.set_cursor(conn, crm, object, page.cursor)
                stats.cursor = page.cursor
        stats.records += len(ids)
        stats.pages += 1
        stats.problems.extend(page.problems)
        if on_page:
            on_page(len(ids))
    return stats


def _unchanged(store: StateStore, crm: str, object: str, frame: pd.DataFrame, ignore: Sequence[str]) -> pd.Series:
    """True for each canonical row the replica already holds with the same values (columns in `ignore` aside)."""
    key = SPECS[object].key
    if not len(frame):
        return pd.Series([], dtype=bool, index=frame.index)
    ids = frame[key].astype(str).tolist()
    stored = store.replica_data(crm, object, ids)
    skip = set(ignore)
    same = []
    for rid, row in zip(ids, as_records(frame)):
        old = stored.get(rid)
        fresh = json.loads(dumps(row))
        same.append(old is not None and all(old.get(k) == v for k, v in fresh.items() if k not in skip))
    return pd.Series(same, dtype=bool, index=frame.index)


def pull_all(
    store: StateStore,
    connectors: dict[str, CrmConnector],
    *,
    now: datetime,
    objects: tuple[str, ...] = PULLED_OBJECTS,
    on_page: Callable[[int], None] | None = None,
) -> list[PullStats]:
    """Pull every object of every connector; a StopRunError propagates with what was stored kept.

    First, write-back Bulk jobs an earlier run left running are collected (sync/pending_writes.py).
    """
    from healthsync.sync.pending_writes import collect_pending_writes

    out = []
    for connector in connectors.values():
        collect_pending_writes(store, connector, now=now)
        for object in objects:
            out.append(pull_object(store, connector, object, now=now, on_page=on_page))
    return out


def replica_frame(store: StateStore, crms: list[str], object: str, *, cache: bool = True) -> pd.DataFrame:
    """The live replica of one object across CRMs, coerced to the canonical dtypes, with a `crm` column.

    `cache=False` reads every record's JSON afresh (what the frame cache must equal; tests compare them).
    """
    from healthsync.config.canonical import coerce_dtypes, empty_frame
    from healthsync.sync.replica_frames import live_frame

    frames = []
    for crm in crms:
        f = live_frame(store, crm, object, cache=cache)  # typed, kept between runs (sync/replica_frames.py)
        if len(f):  # a frame of its own (read or built for this call): the column is added in place
            f["crm"] = crm
            frames.append(f)
    spec = SPECS[object]
    if not frames:
        out = empty_frame(spec)
        out["crm"] = pd.Series([], dtype="string")
        return out
    out = pd.concat(frames, ignore_index=True)
    for c in spec.names:
        if c not in out.columns:
            out[c] = pd.NA
    return coerce_dtypes(out, spec)
