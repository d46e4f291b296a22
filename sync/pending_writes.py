"""Collect write-back Bulk jobs that were still running when their run's bounded wait ended.

A real Bulk API 2.0 job can sit in UploadComplete/InProgress for minutes, and every status
poll is a counted API request, so the connector waits at most `bulk_max_wait_s` and the
write-back stores the job (`bulk_jobs`, with the fields each record carries). A later run
collects it here, at the start of its pull: one status poll per job; once the job is done its
result files settle the records exactly like an answered push (confirmed values stored, failures
queued), and the job is forgotten. Until then the write-back does not plan those records at
all: nothing is sent twice and nothing is lost.

While the job was running unguarded (after its run ended), another user's edit that landed on a
record before the job wrote it is hidden from the pulls that leave out our own changes, so the
records the job wrote are read back once (`pull_own_writes`, connectors/BEHAVIOR.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from healthsync.config.canonical import SPECS, as_records
from healthsync.connectors.base import CrmConnector, HealthsyncError, StopRunError
from healthsync.sync.state import StateStore, dumps
from healthsync.sync.writeback import OBJECT_SECTIONS, CrmWriteReport, RecordPlan, _settle

log = logging.getLogger(__name__)


@dataclass
class CollectedJobs:
    """What one connector's pending jobs gave: settled jobs, jobs still running, the write outcome."""

    crm: str
    collected: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    report: CrmWriteReport = field(default_factory=CrmWriteReport)
    reread: int = 0


def collect_pending_writes(store: StateStore, connector: CrmConnector, *, now: datetime) -> CollectedJobs:
    """Settle every pending Bulk job of `connector` that has finished; keep the others for later."""
    out = CollectedJobs(connector.name)
    collect = getattr(connector, "collect_push", None)
    jobs = store.bulk_jobs(connector.name)
    if collect is None or not jobs:
        return out
    for job in jobs:
        object, records = job["object"], job["records"]
        if object not in OBJECT_SECTIONS:  # another stage's job (e.g. a task upsert): collected by its owner
            continue
        ids = list(records)
        try:
            outcome = collect(object, job["job_id"], ids)
        except StopRunError:
            raise
        except HealthsyncError as exc:  # e.g. the job was deleted: its records become ordinary retries
            log.warning("Bulk job %s of %s cannot be collected: %s", job["job_id"], connector.name, exc)
            outcome = None
            store.record_failed(connector.name, object, [
                {"record_id": rid, "fields": records[rid], "error_code": "BULK_JOB_LOST", "message": str(exc), "retryable": True}
                for rid in ids], job["run_id"] or "", now)
            store.drop_bulk_job(connector.name, job["job_id"])
            continue
        if outcome is None:
            out.running.append(job["job_id"])
            continue
        results, window = outcome
        batch = [RecordPlan(connector.name, object, rid, dict(records[rid]), {}) for rid in ids]
        _settle(store, out.report, connector.name, object, batch, results, job["run_id"] or "", now)
        store.drop_bulk_job(connector.name, job["job_id"])
        out.collected.append(job["job_id"])
        if window is not None:
            out.reread += _reread_own_writes(store, connector, object, window, now)
    return out


def _reread_own_writes(store: StateStore, connector: CrmConnector, object: str, window, now: datetime) -> int:
    """Store what we wrote in the job's window again, as the CRM holds it now (cursor untouched)."""
    reread = getattr(connector, "pull_own_writes", None)
    if reread is None:
        return 0
    key = SPECS[object].key
    n = 0
    for page in reread(object, *window):
        frame = page.records
        if frame is None or not len(frame):
            continue
        frame = frame.dropna(subset=[key]) if key in frame.columns else frame.iloc[0:0]
        ids = frame[key].astype(str).tolist()
        data = [dumps(r) for r in as_records(frame)]
        with store.begin() as conn:
            store.upsert_replica(conn, connector.name, object, ids, data, now)
        n += len(ids)
    return n
