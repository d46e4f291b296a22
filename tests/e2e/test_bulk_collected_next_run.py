"""A write-back Bulk job still running when its run's bounded wait ends is collected by the next `healthsync run`
(sync/pending_writes.py, at the start of the Salesforce lane's pull), and the write-back settles.

The emulator keeps the jobs InProgress for as many status polls as `bulk_polls_in_progress` says: the first run waits
`bulk_max_wait_s` and stores the jobs; the emulator then finishes them, and the next run settles their records from the
result files (confirmed values stored, nothing sent again); the run after writes nothing.
"""

from __future__ import annotations

from healthsync.sync.run import run_cycle


def test_given_bulk_jobs_left_running_when_the_next_run_starts_then_it_collects_them_and_the_write_back_settles(
        make_sandbox, settings, store_of):
    sb = make_sandbox(accounts=30, seed=5, search_lag_seconds=0, bulk_polls_in_progress=10_000)
    settings.sources.salesforce.bulk_threshold = 2
    settings.sources.salesforce.bulk_poll_s = 0.05
    settings.sources.salesforce.bulk_max_wait_s = 0.3
    first = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert first.writes["salesforce"]["pending"] >= 30, first.writes  # accounts and opportunities, in running jobs
    store = store_of(settings)
    assert {job["object"] for job in store.bulk_jobs("salesforce")} >= {"accounts", "opportunities"}
    jobs_before = len(sb.salesforce.jobs)

    sb.salesforce.bulk_polls_in_progress = 0  # the jobs finish: the next status poll says JobComplete
    second = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert any("Bulk job(s) of an earlier run collected" in note for note in second.notes), second.notes
    assert [job for job in store.bulk_jobs("salesforce") if job["object"] in ("accounts", "opportunities")] == []
    # nothing sent again for the records the jobs carried: the jobs' confirmed values are the plan's baseline
    confirmed = store.pushed_values("salesforce", "accounts")
    accounts = {r["Id"]: r for r in sb.records("salesforce", "Account")}
    assert len(confirmed) == 30
    assert all(str(accounts[rid.split(":", 1)[1]]["Health_Score__c"]) == str(float(values["Health_Score__c"]))
               for rid, values in confirmed.items())

    third = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert third.writes.get("salesforce", {}).get("records_changed", 0) == 0, third.writes
    assert third.writes.get("salesforce", {}).get("pending", 0) == 0
    assert len(sb.salesforce.jobs) >= jobs_before
