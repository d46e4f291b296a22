"""`healthsync status`: recent runs, failures and queue sizes, from the state store alone.

No CRM is contacted, so it answers even when a CRM is down or the quota is spent.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from healthsync.sync.state import StateStore, _now, episodes, failed_records, locks, process_alive, utc_aware

#: the lease every run holds (sync/run.py RUN_LOCK); a `running` row whose run holds none is abandoned
_RUN_LEASE = "run_cycle"


def run_state(row: dict, lease: dict | None) -> str:
    """A run's status as shown: a `running` row whose process is gone is `abandoned`.

    On this host the process is checked directly; a run of another host is alive while
    it holds the run lease and the lease has not expired.
    """
    if row.get("status") != "running":
        return row.get("status")
    alive = process_alive(row.get("host"), row.get("pid"))
    if alive is not None:
        return "running" if alive else "abandoned"
    holder = str((lease or {}).get("holder") or "")
    expires = (lease or {}).get("expires_at")
    holds = holder.endswith(":" + str(row.get("run_id"))) or holder == row.get("run_id")
    return "running" if holds and expires is not None and expires > _now() else "abandoned"


def _iso(value) -> str | None:
    value = utc_aware(value)
    return value.isoformat() if value else None


def status(store: StateStore, *, runs: int = 10, failures: int = 20) -> dict[str, Any]:
    """Recent runs (newest first), the failed-records queue (size per CRM/object and the oldest
    entries with their reason), open playbook episodes, and the last data-quality KPIs."""
    store.migrate()
    recent = []
    with store.engine.connect() as conn:
        lease = conn.execute(select(locks).where(locks.c.name == _RUN_LEASE)).mappings().first()
    lease = dict(lease) if lease else None
    for r in store.recent_runs(runs):
        summary = json.loads(r["summary_json"]) if r.get("summary_json") else {}
        recent.append(
            {
                "run_id": r["run_id"],
                "mode": r["mode"],
                "status": run_state(dict(r), lease),
                "host": r.get("host"),
                "pid": r.get("pid"),
                "stopped_reason": summary.get("stopped_reason"),
                "exit_code": r["exit_code"],
                "started_at": _iso(r["started_at"]),
                "finished_at": _iso(r["finished_at"]),
                "dry_run": summary.get("dry_run", False),
                "duration_s": summary.get("duration_s"),
                "accounts_scored": summary.get("accounts_scored"),
                "writes": summary.get("writes"),
                "tasks_created": summary.get("tasks_created"),
                "alerts_sent": summary.get("alerts_sent"),
                "escalations": summary.get("escalations"),
                "errors": len(summary.get("errors") or []),
            }
        )
    with store.engine.connect() as conn:
        by_object = conn.execute(
            select(failed_records.c.crm, failed_records.c.object, func.count()).group_by(failed_records.c.crm, failed_records.c.object)
        ).all()
        oldest = conn.execute(select(failed_records).order_by(failed_records.c.first_failed_at).limit(failures)).mappings().all()
        open_episodes = conn.execute(select(func.count()).select_from(episodes).where(episodes.c.status == "open")).scalar() or 0
    from healthsync.sync.escalation import pending_markers

    maybe_sent = pending_markers(store)
    from healthsync.sync.data_quality import latest as data_quality_latest
    queue = {}
    for crm, object, n in by_object:
        queue.setdefault(crm, {})[object] = int(n)
    return {
        "state": store.shown,
        "runs": recent,
        "last_run": recent[0] if recent else None,
        "queues": {
            "failed_records": sum(sum(v.values()) for v in queue.values()),
            "failed_records_by_object": queue,
            "open_episodes": int(open_episodes),
            "slack_maybe_sent": len(maybe_sent),
        },
        # Slack sends that started but were never confirmed (crash or lost answer): not resent, listed here
        "slack_maybe_sent": [
            {k: (_iso(v) if k.endswith("_at") else v) for k, v in m.items()} for m in maybe_sent[:failures]
        ],
        # the last run's data-quality KPIs per source, and those below threshold (sync/data_quality.py)
        "data_quality": data_quality_latest(store),
        "failed_records": [
            {
                "crm": f["crm"],
                "object": f["object"],
                "record_id": f["record_id"],
                "error_code": f["error_code"],
                "message": f["message"],
                "retryable": bool(f["retryable"]),
                "attempts": f["attempts"],
                "first_failed_at": _iso(f["first_failed_at"]),
                "last_failed_at": _iso(f["last_failed_at"]),
            }
            for f in oldest
        ],
    }


def retry_failed(settings, *, ready: dict | None = None) -> dict[str, Any]:
    """`healthsync sync --retry-failed` (implemented with the write-back in sync.run)."""
    from healthsync.sync.run import retry_failed as run_retry

    return run_retry(settings, ready=ready)
