"""Both allowances busy (issue 14 item 4): the CRM lanes' pull, write-back and task stages run concurrently.

Salesforce is slowed by the sandbox's fault injection (`latency_ms` on every request); the emulators' request
log then shows HubSpot's stages done while Salesforce's are still going. Run one after the other, every HubSpot
request of a stage would come after the last Salesforce one. Ordering in the request log, not timings.
"""

from __future__ import annotations

from healthsync.sync.run import run_cycle

FIELDS_CHECK = ("describe", "/properties/")


class Marks:
    """Request-log sequence number at each hook point of the run's main thread."""

    def __init__(self, sb):
        self.sb, self.at = sb, {}

    def __call__(self, point: str) -> None:
        self.at.setdefault(point, self.sb.requests()["last_seq"])


def _seqs(sb, api: str, after: int, until: int) -> list[int]:
    return [r["seq"] for r in sb.requests(since=after, api=api)["requests"]
            if r["seq"] <= until and not any(f in r["path"] or f in r["endpoint"] for f in FIELDS_CHECK)]


def test_given_salesforce_slowed_when_run_then_hubspot_pulls_writes_and_tasks_while_salesforce_is_still_going(
        make_sandbox, settings, store_of):
    sb = make_sandbox(accounts=30, seed=5, search_lag_seconds=0)
    sb.set_faults(api="salesforce", latency_ms=400)
    marks = Marks(sb)
    start = sb.requests()["last_seq"]
    summary = run_cycle(settings, ready=sb.ready, json_mode=True, hooks=marks)
    assert summary.status == "ok", summary.errors
    assert {crm: lane["status"] for crm, lane in summary.lanes.items()} == {"salesforce": "ok", "hubspot": "ok"}

    # pull: HubSpot's whole pull lies inside Salesforce's
    sf, hs = _seqs(sb, "salesforce", start, marks.at["after_pull"]), _seqs(sb, "hubspot", start, marks.at["after_pull"])
    assert sf and hs
    assert max(hs) < max(sf), (sf, hs)  # (one after the other: every HubSpot call after Salesforce's last)

    # write-back and tasks: HubSpot has written its fields and created its tasks before Salesforce's last call
    store = store_of(settings)
    with store.engine.connect() as conn:
        created = dict(conn.exec_driver_sql("SELECT crm, COUNT(*) FROM episodes WHERE task_id IS NOT NULL GROUP BY crm").all())
    assert created.get("salesforce") and created.get("hubspot")
    window = (marks.at["after_score"], marks.at["after_writeback"])
    sf_rows = [r for r in sb.requests(since=window[0], api="salesforce")["requests"] if r["seq"] <= window[1]]
    hs_rows = [r for r in sb.requests(since=window[0], api="hubspot")["requests"] if r["seq"] <= window[1]]
    hs_task_create = [r["seq"] for r in hs_rows if r["endpoint"] == "POST /crm/v3/objects/{type}/batch/{op}" and "/tasks/" in r["path"]]
    hs_field_writes = [r["seq"] for r in hs_rows if r["endpoint"] == "POST /crm/v3/objects/{type}/batch/{op}" and "/tasks/" not in r["path"]]
    assert hs_task_create and hs_field_writes
    assert max(hs_task_create + hs_field_writes) < max(r["seq"] for r in sf_rows)
