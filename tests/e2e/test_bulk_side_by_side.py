"""Bulk API 2.0 jobs side by side (issue 14, "a day with 1% changed"): a Salesforce lane whose write-back goes as
Bulk jobs runs its accounts' job, its opportunities' job and its task creation at once, instead of waiting
for each job's status polls in turn (sync/writeback.py `_push_objects`, sync/run.py `_waits_on_jobs`).

Checked in the emulator's request log and its jobs (each job's first to last request overlaps the others),
and in the CRM: every record written, every task there, and the write-back's `api_calls` counting its own
requests only (the tasks share the connector).
"""

from __future__ import annotations

import re

from healthsync.sync.run import run_cycle

JOB_PATH = re.compile(r"/jobs/ingest/(750[0-9A-Za-z]+)")


def _job_spans(sb, since: int) -> dict[str, tuple[int, int, int]]:
    """Object of each Bulk job -> (first seq, last seq, requests) of the requests naming it."""
    spans: dict[str, list[int]] = {}
    for r in sb.requests(since=since, api="salesforce")["requests"]:
        m = JOB_PATH.search(r["path"])
        if m:
            spans.setdefault(m.group(1), []).append(r["seq"])
    objects = {jid: job["object"] for jid, job in sb.salesforce.jobs.items()}
    return {objects[jid]: (min(seqs), max(seqs), len(seqs)) for jid, seqs in spans.items()}


def test_given_a_write_back_in_bulk_jobs_when_run_then_both_jobs_and_the_task_job_run_at_once_and_all_lands(
        make_sandbox, settings, store_of):
    sb = make_sandbox(accounts=30, seed=5, search_lag_seconds=0)
    settings.sources.salesforce.bulk_threshold = 2
    settings.sources.salesforce.bulk_poll_s = 0.4  # a job takes ~4 s of polls: long enough to see the overlap
    start = sb.requests()["last_seq"]
    summary = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert summary.status == "ok", summary.errors

    spans = _job_spans(sb, start)
    assert set(spans) == {"Account", "Opportunity", "Task"}, spans
    # every job was created before any of them had its last request (the results): all three in flight at once
    assert max(first for first, _, _ in spans.values()) < min(last for _, last, _ in spans.values()), spans

    # everything landed: the scores in the Account fields, the probabilities, the tasks
    accounts = {r["Id"]: r for r in sb.records("salesforce", "Account")}
    sf_scores = summary_scores(store_of(settings), "salesforce")
    assert len(sf_scores) == 30 and all(accounts[rid]["Health_Score__c"] == score for rid, score in sf_scores.items())
    writes = summary.writes["salesforce"]
    assert writes["failed"] == 0 and writes["by_object"]["accounts"] == 30 and writes["by_object"]["opportunities"] > 2
    tasks = [t for t in sb.records("salesforce", "Task") if t.get("Healthsync_Key__c")]
    with store_of(settings).engine.connect() as conn:
        created = conn.exec_driver_sql("SELECT COUNT(*) FROM episodes WHERE crm = 'salesforce' AND task_id IS NOT NULL").scalar()
    assert len(tasks) == created > 2

    # the write-back's calls are its own: its two jobs and the guard sweeps, never the task job's requests
    sf_calls_after_pull = len(sb.requests(since=start, api="salesforce")["requests"])
    job_calls = spans["Account"][2] + spans["Opportunity"][2] + 2  # + the two job creates (no id in their path)
    assert job_calls <= writes["api_calls"] <= sf_calls_after_pull - spans["Task"][2]


def summary_scores(store, crm: str) -> dict[str, float]:
    """The score each account of `crm` got in the last run (the CRM's own id -> score), from the state database."""
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT account_id, score FROM score_history WHERE run_id = (SELECT MAX(run_id) FROM score_history)").all()
    prefix = {"salesforce": "sf", "hubspot": "hs"}[crm]
    return {account_id.split(":", 1)[1]: score for account_id, score in rows if account_id.startswith(prefix + ":")}
