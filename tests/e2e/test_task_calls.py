"""Tasks at the minimum (issue 14 item 3): calls per endpoint of the task stages on a small portal.

A whole run goes through `run_cycle`; its hooks mark the request log's sequence number at each
point, with the thread that reached it (the CRM lanes run concurrently, each its write-back, then
its tasks, in its own thread `lane-<crm>`; the read-back runs beside the pull; the playbook plan, once
for both CRMs, on a thread `playbook plan` beside the write-backs), and the emulators'
own log (`Sandbox.requests`, i.e. `GET /requests`) is counted per endpoint against what the work
needs at least:

- read back the tasks changed since the last run: one query (Salesforce) / one search (HubSpot)
  per run, during the pull, shared by the playbooks and escalation stages (the first run's HubSpot read is done
  twice: once, then again after the search lag, so no task made just before a lost state is missed);
- create the new tasks: one upsert per 200 (Salesforce, on the unique external id) / one batch
  create per 100 (HubSpot), with no lookup before;
- owners: read once per run (the HubSpot owners list is one page here).
"""

from __future__ import annotations

import math
import threading

from healthsync.sync.run import run_cycle


def counts(sb, after: int, until: int, api: str, path: str | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in sb.requests(since=after, api=api)["requests"]:
        if r["seq"] <= until and (path is None or path in r["path"]):
            out[r["endpoint"]] = out.get(r["endpoint"], 0) + 1
    return out


class Marks:
    """(hook point, request sequence number, thread) in the order the run reached them."""

    def __init__(self, sb):
        self.sb, self.events = sb, []

    def __call__(self, point: str) -> None:
        self.events.append((point, self.sb.requests()["last_seq"], threading.current_thread().name))

    def _of(self, lane: str | None):
        # a lane's thread, or one of its stages side by side (`lane-salesforce-1`: its tasks beside its write-back)
        return [(p, s) for p, s, thread in self.events
                if lane is None or thread == f"lane-{lane}" or thread.startswith(f"lane-{lane}-")]

    def at(self, point: str, nth: int = 0, lane: str | None = None) -> int:
        return [seq for p, seq in self._of(lane) if p == point][nth]

    def before(self, seq: int, lane: str | None = None) -> int:
        """The mark just before `seq` (the end of the previous step; of that lane's thread when given)."""
        earlier = [s for _, s in self._of(lane) if s < seq]
        return max(earlier) if earlier else 0


def test_given_a_small_portal_then_the_task_stages_make_the_minimum_calls_per_endpoint(make_sandbox, settings, store_of):
    sb = make_sandbox(accounts=30, seed=5, search_lag_seconds=2)
    marks = Marks(sb)
    start = sb.requests()["last_seq"]
    first = run_cycle(settings, ready=sb.ready, json_mode=True, hooks=marks)
    assert first.status == "ok", first.errors
    end = sb.requests()["last_seq"]
    store = store_of(settings)
    with store.engine.connect() as conn:
        created = dict(conn.exec_driver_sql("SELECT crm, COUNT(*) FROM episodes WHERE task_id IS NOT NULL GROUP BY crm").all())
    assert set(created) == {"salesforce", "hubspot"} and first.tasks_created == sum(created.values())

    # the read-back happens during the pull, beside it (HubSpot: read, then again after the search lag on a first run)
    pulled = marks.at("after_pull")
    assert counts(sb, start, pulled, "hubspot", "/objects/tasks/search") == {"POST /crm/v3/objects/{type}/search": 2}
    assert counts(sb, pulled, end, "hubspot", "/objects/tasks/search") == {}
    # the playbook plan is made once, on its own thread, while the lanes write back; then each lane, in its thread,
    # creates its CRM's tasks (after_task_create), with no lookup before: nothing task-related is sent before the plan
    # is recorded, and Salesforce reads nothing more for its tasks
    recorded = marks.at("after_episodes_recorded")
    assert [thread for p, _, thread in marks.events if p == "after_episodes_recorded"] == ["playbook plan"]
    sf_created, hs_created = marks.at("after_task_create", lane="salesforce"), marks.at("after_task_create", lane="hubspot")
    sf_stages = counts(sb, marks.at("after_score"), marks.at("after_playbooks"), "salesforce")
    writes = sf_stages.pop("PATCH composite/sobjects")
    assert sf_stages == {"GET query": writes, "PATCH composite/sobjects/{O}/{Field}": math.ceil(created["salesforce"] / 200)}
    assert counts(sb, marks.at("after_score"), recorded, "salesforce", "/Task") == {}
    assert counts(sb, marks.at("after_score"), recorded, "hubspot", "/objects/tasks") == {}
    assert counts(sb, recorded, sf_created, "salesforce", "/Task") == {"PATCH composite/sobjects/{O}/{Field}": math.ceil(created["salesforce"] / 200)}
    assert counts(sb, recorded, hs_created, "hubspot", "/objects/tasks") == {"POST /crm/v3/objects/{type}/batch/{op}": math.ceil(created["hubspot"] / 100)}
    assert counts(sb, start, end, "hubspot", "/associations/tasks") == {}  # the account is in the key
    # the escalation stage reads nothing again: the read-back and the owners are shared
    escalation = (marks.at("after_playbooks"), marks.at("after_escalation"))
    assert counts(sb, *escalation, "salesforce") == {} and counts(sb, *escalation, "hubspot") == {}
    assert counts(sb, start, end, "hubspot").get("GET /crm/v3/owners") == 1  # owners once per run

    # the next run, nothing changed: one read-back per CRM, no create, owners once
    marks.events.clear()
    start = sb.requests()["last_seq"]
    again = run_cycle(settings, ready=sb.ready, json_mode=True, hooks=marks)
    end = sb.requests()["last_seq"]
    assert again.status == "ok", again.errors
    assert (again.tasks_created, again.alerts_sent) == (0, 0)
    assert counts(sb, start, end, "hubspot", "/objects/tasks") == {"POST /crm/v3/objects/{type}/search": 1}
    assert counts(sb, start, end, "salesforce", "/composite/sobjects/Task") == {}
    assert counts(sb, start, end, "hubspot").get("GET /crm/v3/owners") == 1
    # the escalation stage reads nothing again: tasks and owners (read once, after each lane's pull) are shared
    escalation = (marks.at("after_playbooks"), marks.at("after_escalation"))
    assert counts(sb, *escalation, "salesforce") == {} and counts(sb, *escalation, "hubspot") == {}
