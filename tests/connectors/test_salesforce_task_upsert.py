"""Salesforce tasks are upserted on `Healthsync_Key__c` with no lookup first (issue 14 item 3).

Up to `bulk_threshold` tasks go through sObject Collections upsert, more through one Bulk API
2.0 upsert job; the unique external id makes a repeated upsert return the same task.
"""

from datetime import datetime, timezone

import pytest

from healthsync.connectors.base import TaskSpec
from healthsync.connectors.salesforce import salesforce_from_ready
from healthsync.connectors.sandbox import Sandbox
from tests.connectors.conftest import FAST, MAPPING


@pytest.fixture(scope="module")
def sb():
    with Sandbox(accounts=10, seed=4, precreate_fields=True) as sandbox:
        yield sandbox


def specs(sb, prefix: str, n: int) -> list[TaskSpec]:
    accounts = sorted(a["Id"] for a in sb.records("salesforce", "Account") if not a["IsDeleted"])
    due = datetime(2026, 12, 10, tzinfo=timezone.utc)
    return [TaskSpec(f"{prefix}:sf:{accounts[k % len(accounts)]}:{k}", f"sf:{accounts[k % len(accounts)]}", "ana.lopez@example.com",
                     f"Call {k}", "why, with a comma\nand a new line", due, "high") for k in range(n)]


def calls(sb, since: int) -> dict[str, int]:
    return sb.requests(since=since, api="salesforce")["counts"].get("salesforce", {})


def keyed(sb, prefix: str) -> list[dict]:
    return [t for t in sb.records("salesforce", "Task") if (t.get("Healthsync_Key__c") or "").startswith(prefix) and not t["IsDeleted"]]


@pytest.mark.parametrize("n, threshold, endpoint", [(3, 2000, "PATCH composite/sobjects/{O}/{Field}"), (8, 5, "POST jobs/ingest")])
def test_given_new_tasks_then_one_upsert_on_the_key_creates_them_and_a_repeat_returns_the_same_tasks(sb, n, threshold, endpoint):
    prefix = f"upsert{n}"
    connector = salesforce_from_ready(sb.ready, MAPPING["salesforce"], retry=FAST, bulk_threshold=threshold, bulk_poll_seconds=0.05)
    connector._load_owners()  # owners are loaded once per run anyway; keep them out of the counts
    seq = sb.requests()["last_seq"]
    first = connector.create_tasks(specs(sb, prefix, n))
    made = calls(sb, seq)
    assert all(r.ok and r.crm_id and r.message is None for r in first)
    assert made.get(endpoint) == 1 and "GET query" not in made and "POST composite/sobjects" not in made, made
    tasks = keyed(sb, prefix)
    assert sorted(t["Id"] for t in tasks) == sorted(r.crm_id for r in first)
    assert {t["Description"] for t in tasks} == {"why, with a comma\nand a new line"}
    assert all(t["Status"] == "Not Started" and t["Priority"] == "High" for t in tasks)
    if endpoint == "POST jobs/ingest":
        [job] = [j for j in sb.salesforce.jobs.values() if j["object"] == "Task"]
        assert (job["operation"], job["externalIdFieldName"]) == ("upsert", "Healthsync_Key__c")

    again = connector.create_tasks(specs(sb, prefix, n))
    assert [r.crm_id for r in again] == [r.crm_id for r in first]
    assert all(r.ok and r.message == "already exists" for r in again)
    assert len(keyed(sb, prefix)) == n  # none twice
