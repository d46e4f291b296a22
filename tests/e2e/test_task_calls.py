"""Tasks at the minimum (issue 14 item 3): calls per endpoint of the task stages on a small portal.

A whole run goes through `run_cycle`; hooks mark the request log's sequence number between
stages, and the emulators' own log (`Sandbox.requests`, i.e. `GET /requests`) is counted per
endpoint for the playbooks + escalation stages against what the work needs at least:

- read back the tasks changed since the last run: one query (Salesforce) / one search (HubSpot)
  per run, shared by both stages (the first run's HubSpot read is done twice: once, then again
  after the search lag, so no task made just before a lost state is missed);
- create the new tasks: one upsert per 200 (Salesforce, on the unique external id) / one batch
  create per 100 (HubSpot), with no lookup before;
- owners: read once per run (the HubSpot owners list is one page here).
"""

from __future__ import annotations

import math

from healthsync.sync.run import run_cycle


def window(sb, start: int, end: int, api: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in sb.requests(since=start, api=api)["requests"]:
        if r["seq"] <= end:
            counts[r["endpoint"]] = counts.get(r["endpoint"], 0) + 1
    return counts


def test_given_a_small_portal_then_the_task_stages_make_the_minimum_calls_per_endpoint(make_sandbox, settings, store_of):
    sb = make_sandbox(accounts=30, seed=5, search_lag_seconds=2)
    marks: dict[str, int] = {}

    def mark(point: str) -> None:
        if point in ("after_writeback", "after_playbooks", "after_escalation"):
            marks[point] = sb.requests()["last_seq"]

    start = sb.requests()["last_seq"]
    first = run_cycle(settings, ready=sb.ready, json_mode=True, hooks=mark)
    assert first.status == "ok", first.errors
    store = store_of(settings)
    with store.engine.connect() as conn:
        created = dict(conn.exec_driver_sql("SELECT crm, COUNT(*) FROM episodes WHERE task_id IS NOT NULL GROUP BY crm").all())
    assert created and first.tasks_created == sum(created.values())

    sf = window(sb, marks["after_writeback"], marks["after_escalation"], "salesforce")
    assert sf == {"GET query": 1, "PATCH composite/sobjects/{O}/{Field}": math.ceil(created["salesforce"] / 200)}, sf
    hs = window(sb, marks["after_writeback"], marks["after_escalation"], "hubspot")
    assert hs == {"POST /crm/v3/objects/{type}/search": 2, "POST /crm/v3/objects/{type}/batch/{op}": math.ceil(created["hubspot"] / 100)}, hs
    whole = window(sb, start, sb.requests()["last_seq"], "hubspot")
    assert whole.get("GET /crm/v3/owners") == 1  # owners once per run (the check, the pull, the tasks and the ladder share them)

    # the next run, nothing changed: one read-back per CRM (and owners once per run), nothing else in these stages
    marks.clear()
    start = sb.requests()["last_seq"]
    again = run_cycle(settings, ready=sb.ready, json_mode=True, hooks=mark)
    assert again.status == "ok", again.errors
    assert (again.tasks_created, again.alerts_sent) == (0, 0)
    # Salesforce: the task read-back, and the users (owners), read once in this run: the pull found no change
    # of anyone else's, so the escalation ladder is the first to need them
    assert window(sb, marks["after_writeback"], marks["after_escalation"], "salesforce") == {"GET query": 2}
    assert window(sb, marks["after_writeback"], marks["after_escalation"], "hubspot") == {"POST /crm/v3/objects/{type}/search": 1}
    assert window(sb, start, sb.requests()["last_seq"], "hubspot").get("GET /crm/v3/owners") == 1  # once per run
