"""A sandbox's world saved to a file and started again: the same CRMs and Slack, the clock moved on.

Read back through the official clients (simple-salesforce, hubspot-api-client, slack-sdk) on
the new ports, as the product would after a restart.
"""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta

import pytest
import requests

from healthsync.connectors.sandbox import Sandbox, WorldFileError, load_world, save_world
from healthsync.connectors.sandbox.demo_day import change_accounts
from healthsync.connectors.sandbox.world import WORLD_FORMAT
from sandbox_helpers import hs_client, sf_client, slack_client, tiny_portfolio


def _clock(sb: Sandbox) -> datetime:
    reply = requests.get(sb.ready["inspect_url"] + "/clock", timeout=10)
    reply.raise_for_status()
    return datetime.fromisoformat(reply.json()["now"])


def test_given_a_saved_world_when_started_again_a_day_later_then_every_record_and_message_is_there_and_ids_go_on(tmp_path):
    path = tmp_path / "world.pickle"
    with Sandbox(portfolio=tiny_portfolio(12), slack_message_interval_s=0) as first:
        sf, hs, slack = sf_client(first), hs_client(first), slack_client(first)
        account = sf.query("SELECT Id, Name FROM Account ORDER BY Name LIMIT 1")["records"][0]
        sf.Account.update(account["Id"], {"Name": "Renamed before the save"})
        company = hs.crm.companies.basic_api.get_page(limit=1).results[0]
        hs.crm.companies.basic_api.update(company.id, {"properties": {"name": "Renamed company"}})
        channel = slack.conversations_list()["channels"][0]["id"]
        posted = slack.chat_postMessage(channel=channel, text="kept across the restart")
        saved_clock = _clock(first)
        old_account_ids = {r["Id"] for r in first.records("salesforce", "Account")}
        counts = {obj: len(first.records("salesforce", obj)) for obj in ("Account", "Opportunity", "Case", "User")}
        save_world(first, path, meta={"day": 1})
    assert path.stat().st_mode & 0o077 == 0, "the world file holds credentials: owner only"

    second = load_world(path, advance_seconds=86_400).start()
    try:
        assert second.world_meta == {"day": 1}
        moved = _clock(second) - saved_clock
        assert timedelta(days=1) <= moved < timedelta(days=1, minutes=1)
        sf, hs, slack = sf_client(second), hs_client(second), slack_client(second)
        assert {obj: len(second.records("salesforce", obj)) for obj in counts} == counts
        assert sf.Account.get(account["Id"])["Name"] == "Renamed before the save"
        assert hs.crm.companies.basic_api.get_by_id(company.id, properties=["name"]).properties["name"] == "Renamed company"
        history = slack.conversations_history(channel=channel, limit=15)["messages"]
        assert [m["text"] for m in history if m["ts"] == posted["ts"]] == ["kept across the restart"]
        created = sf.Account.create({"Name": "After the restart"})["id"]
        assert created not in old_account_ids  # id counters were saved with the records
        assert sf.Account.get(created)["CreatedDate"].startswith(str((saved_clock + timedelta(days=1)).date()))
    finally:
        second.stop()


def test_given_a_world_saved_with_fields_created_when_loaded_then_healthsync_fields_exist_and_the_same_credentials_work(tmp_path):
    path = tmp_path / "world.pickle"
    with Sandbox(portfolio=tiny_portfolio(3), precreate_fields=True) as first:
        ready = first.ready
        save_world(first, path)
    with load_world(path) as second:
        assert second.ready["salesforce"]["password"] == ready["salesforce"]["password"]
        assert second.ready["hubspot"]["access_token"] == ready["hubspot"]["access_token"]
        described = {f["name"] for f in sf_client(second).Account.describe()["fields"]}
        assert "Health_Score__c" in described
        names = {p.name for p in hs_client(second).crm.properties.core_api.get_all("companies").results}
        assert "health_score" in names


def test_given_a_day_of_demo_edits_when_applied_twice_then_the_same_accounts_change_and_they_differ_per_day():
    def edited(day: int) -> list[tuple[str, str, str]]:
        with Sandbox(accounts=30, seed=5) as sb:
            return [(c.crm, c.record_id, c.direction) for c in change_accounts(sb, day, per_crm=4)]

    day2 = edited(2)
    assert day2 == edited(2)
    assert len(day2) == 8 and {crm for crm, _, _ in day2} == {"salesforce", "hubspot"}
    assert {d for _, _, d in day2} == {"slipped", "recovered"}
    assert day2 != edited(3)


def test_given_demo_edits_when_applied_then_the_crm_records_carry_them_as_a_person_s_edit():
    with Sandbox(accounts=20, seed=3) as sb:
        before = {r["Id"]: r for r in sb.records("salesforce", "Account")}
        changes = change_accounts(sb, 2, per_crm=2)
        slipped = next(c for c in changes if c.crm == "salesforce" and c.direction == "slipped")
        after = sb.record("salesforce", "Account", slipped.record_id)
        assert after["CSM_Sentiment__c"] == "red" and after["Days_Payment_Late__c"] >= 35
        assert after["SystemModstamp"] > before[slipped.record_id]["SystemModstamp"]
        assert after["LastModifiedById"] != sb.salesforce.integration_user_id
        hs_change = next(c for c in changes if c.crm == "hubspot")
        props = sb.record("hubspot", "companies", hs_change.record_id)["properties"]
        assert props["csm_sentiment"] in ("red", "green") and props["qbrs_missed"] == str(hs_change.values["qbrs_missed"])


def test_given_a_new_sandbox_when_its_portfolio_is_generated_then_it_is_anchored_to_the_emulator_s_today():
    start = datetime.fromisoformat("2031-03-15T09:00:00+00:00")
    with Sandbox(accounts=20, seed=3, now=start) as sb:
        created = sorted(r["CreatedDate"] for r in sb.records("salesforce", "Case"))
        renewals = [r["Renewal_Date__c"] for r in sb.records("salesforce", "Account")]
    assert "2031-03-08" <= created[-1][:10] <= "2031-03-15"  # tickets run up to today, never past it
    assert created[0][:10] >= "2030-09-15"  # over the trailing 180 days
    assert min(renewals) >= "2031-03-15"  # every renewal is ahead of today


def test_given_a_file_that_is_no_world_when_loaded_then_the_error_says_so(tmp_path):
    garbage = tmp_path / "garbage.pickle"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(WorldFileError, match="not a saved sandbox world"):
        load_world(garbage)
    other = tmp_path / "other.pickle"
    other.write_bytes(pickle.dumps({"format": WORLD_FORMAT + 1, "apis": {}}))
    with pytest.raises(WorldFileError, match="another version of healthsync"):
        load_world(other)
    with pytest.raises(WorldFileError, match="cannot read"):
        load_world(tmp_path / "missing.pickle")


def test_given_a_world_with_the_demo_warehouse_when_loaded_then_the_same_usage_is_served_from_a_small_file(tmp_path):
    import duckdb

    def usage_counts(sb: Sandbox) -> tuple[int, int]:
        path = sb.ready["warehouse"]["url"].removeprefix("duckdb:///")
        with duckdb.connect(path, read_only=True) as con:
            return (con.execute("select count(*) from usage_events").fetchone()[0],
                    con.execute("select count(distinct account_key) from usage_events").fetchone()[0])

    path = tmp_path / "world.pickle"
    with Sandbox(accounts=40, seed=3, warehouse=True) as first:
        before = usage_counts(first)
        save_world(first, path)
    assert before[0] > 1000
    with load_world(path, advance_seconds=86_400) as second:
        assert usage_counts(second) == before
    assert path.stat().st_size < 2_000_000  # the recipe, not the events
