"""HubSpot incremental pulls against the emulator's HubSpot search (issue 12 items 2, 3, 5; issue 14 item 1).

Everything goes through hubspot-api-client over loopback HTTP. The emulator recomputes
search results on every page, caps a query at 10,000 results and lags writes in its
search index, as HubSpot does (connectors/sandbox/BEHAVIOR.md, "Search").
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from healthsync.config.settings import load_settings
from healthsync.connectors.base import Change
from healthsync.connectors.hubspot import HubSpotConnector, _Pacer, hubspot_from_ready
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.pull import pull_object
from healthsync.sync.state import open_store
from healthsync.sync.writeback import RecordPlan, WritePlan, execute_plan
from tests.connectors.conftest import FAST, MAPPING


def connect(sb: Sandbox, **kwargs) -> HubSpotConnector:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("lookback_minutes", 0)
    return hubspot_from_ready(sb.ready, MAPPING["hubspot"], **kwargs)


def names(pages) -> dict[str, str]:
    return {r["account_id"]: r["name"] for p in pages for r in p.records.to_dict("records")}


def searches(sb: Sandbox, since: int) -> list[dict]:
    return [r for r in sb.requests(since=since, api="hubspot")["requests"] if r["path"].rstrip("/").endswith("/search")]


def test_given_a_record_edited_while_the_pull_pages_then_an_incremental_pull_still_returns_every_record():
    # the probe of issue 12 item 2: 320 records in the window, one touched after page 1
    with Sandbox(accounts=0, search_lag_seconds=0) as sb:
        since = sb.clock.now()
        ids = [sb.create("hubspot", "companies", {"name": f"Company {i}"}) for i in range(320)]
        oldest = ids[0]  # the first record of page 1: an edit moves it behind every other one
        sb.hubspot.after_searches(1, lambda: sb.modify("hubspot", "companies", oldest, {"name": "Edited mid-pull"}))
        got = names(connect(sb).pull("accounts", since))
        assert set(got) == {f"hs:{i}" for i in ids}  # offset paging loses the record that slid into page 1's place
        # the edit came after the run's start: this pull saw the old version, the next one reads the new
        assert got[f"hs:{oldest}"] == "Company 0"


def test_given_more_than_ten_thousand_records_sharing_one_modification_time_then_an_incremental_pull_reads_them_all():
    # issue 12 item 3: an import or workflow stamps them all alike; today every run stops (exit 3)
    n = 10_050
    with Sandbox(accounts=0, search_lag_seconds=0) as sb:
        ids = sb.hubspot.insert_columns("companies", {"name": [f"Company {i}" for i in range(n)]}, n)
        sb.hubspot.insert_columns("companies", {"name": ["Untouched"] * 12_000}, 12_000)  # searching beats listing all
        sb.advance_clock(3600)
        since = sb.clock.now()
        stamp = sb.modify_many("hubspot", "companies", ids, {"name": "Imported"})
        sb.advance_clock(120)  # the import is older than the search lag allowance (60 s)
        seq = sb.requests()["last_seq"]
        pages = list(connect(sb).pull("accounts", since))
        got = [i for p in pages for i in p.records["account_id"]]
        assert len(got) == len(set(got)) == n and set(got) == {f"hs:{i}" for i in ids}
        calls = searches(sb, seq)
        assert calls and all(c["status"] == 200 for c in calls)  # never past the 10,000-result cap
        assert len(calls) <= 3 + -(-n // 200)  # a page per 200 records: the instant is read by id, not again and again
        assert pages[-1].cursor > datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # the next run starts after it


def test_given_a_write_not_yet_searchable_at_the_run_start_then_the_next_pull_still_reads_it():
    # issue 12 item 5: search indexes writes after a delay, not always in modification order
    with Sandbox(accounts=0, search_lag_seconds=0) as sb:
        since = sb.clock.now()
        slow = sb.create("hubspot", "companies", {"name": "Slow"})
        quick = sb.create("hubspot", "companies", {"name": "Quick"})
        sb.hubspot.delay_indexing("companies", slow, 100.0)  # its next version waits 100 s for the index
        sb.modify("hubspot", "companies", slow, {"name": "Slow, edited"})
        time.sleep(0.05)
        sb.modify("hubspot", "companies", quick, {"name": "Quick, edited"})  # later, but searchable at once
        time.sleep(0.05)  # the run starts after both writes
        conn = connect(sb)
        first = list(conn.pull("accounts", since))
        assert names(first)[f"hs:{quick}"] == "Quick, edited" and names(first)[f"hs:{slow}"] == "Slow"
        cursor = first[-1].cursor
        assert cursor <= sb.clock.now()
        sb.advance_clock(200)  # the slow write is searchable now
        second = names(conn.pull("accounts", cursor))
        assert second.get(f"hs:{slow}") == "Slow, edited"  # the cursor did not move past what search could not see


def _store(tmp_path):
    return open_store(f"sqlite:///{tmp_path}/state.db")


def _write(store, conn, ids: list[str], field: str, value) -> None:
    """Write one field on every record through the write-back (which records what the CRM confirmed)."""
    settings = load_settings(environ={})
    plan = WritePlan(records=[RecordPlan("hubspot", "opportunities", f"hs:{i}", {field: value}, {}) for i in ids])
    execute_plan(store, settings, plan, {"hubspot": conn}, run_id="r1", now=datetime.now(timezone.utc))


@pytest.mark.parametrize("page_records", [None, 2])
def test_given_only_our_own_writes_since_the_last_pull_then_no_record_is_read_again_but_others_changes_are(
        tmp_path, monkeypatch, page_records):
    # issue 14 item 1: the next day re-read every record the first sync wrote. page_records=2: the records read
    # are checked for being only our own write a few at a time (as PAGE_RECORDS at a time at scale)
    if page_records:
        monkeypatch.setattr("healthsync.connectors.hubspot.PAGE_RECORDS", page_records)
    with Sandbox(accounts=6, seed=4, precreate_fields=True) as sb:
        store = _store(tmp_path)
        conn = connect(sb)
        now = datetime.now(timezone.utc)
        pull_object(store, conn, "opportunities", now=now)
        deals = sorted((r["id"] for r in sb.records("hubspot", "deals")), key=int)
        raced, edited = deals[0], deals[1]
        sb.modify("hubspot", "deals", raced, {"dealname": "Renamed before our write"})  # after our read, before our write
        _write(store, conn, deals, "health_adjusted_probability", 0.5)
        sb.modify("hubspot", "deals", edited, {"dealname": "Renamed after our write"})
        sb.advance_clock(sb.hubspot.search_lag_seconds)
        seq = sb.requests()["last_seq"]
        stats = pull_object(store, conn, "opportunities", now=now)
        stored = {r["opportunity_id"]: r["name"] for r in store.load_replica("hubspot", "opportunities")}
        assert stored[f"hs:{raced}"] == "Renamed before our write" and stored[f"hs:{edited}"] == "Renamed after our write"
        assert stats.records == 2  # not the other deals, whose only change is our write
        assert len(searches(sb, seq)) == 1  # search still lists our writes (HubSpot cannot filter them out) ...
        reads = [r for r in sb.requests(since=seq, api="hubspot")["requests"] if "associations" in r["path"]]
        assert len(reads) == 1  # ... but they are not rehydrated: associations are read for the 2 changed deals only
        store.close()


def test_given_most_records_changed_since_the_cursor_then_they_are_listed_with_their_associations_not_searched():
    # the day after the first sync wrote them all: listing 100 per call at 19 calls/s beats searching 200 at 5/s
    with Sandbox(accounts=0, search_lag_seconds=0) as sb:
        company = sb.create("hubspot", "companies", {"name": "Acme"})
        n = 2_400
        ids = sb.hubspot.insert_columns("deals", {"dealname": [f"Deal {i}" for i in range(n)], "pipeline": ["default"] * n}, n)
        sb.hubspot.link_many("deals", ids, "companies", [company] * n)
        sb.advance_clock(3600)
        since = sb.clock.now()
        changed = ids[: n - 300]
        sb.modify_many("hubspot", "deals", changed, {"dealname": "Changed"})
        seq = sb.requests()["last_seq"]
        pages = list(connect(sb).pull("opportunities", since))
        rows = [r for p in pages for r in p.records.to_dict("records")]
        assert sorted(r["opportunity_id"] for r in rows) == sorted(f"hs:{i}" for i in changed)
        assert {r["account_id"] for r in rows} == {f"hs:{company}"}
        calls = sb.requests(since=seq, api="hubspot")["requests"]
        assert len(searches(sb, seq)) == 2  # the window's size, the object's size
        assert not [c for c in calls if "associations" in c["path"]]  # listed with their associations
        lists = sum(1 for c in calls if c["method"] == "GET" and c["path"].rstrip("/").endswith("/objects/deals"))
        assert lists == n // 100 + 1  # every deal, 100 a page, and the archived ones


def test_given_a_tier_then_the_connector_paces_at_its_whole_allowance_less_the_configured_margin():
    build = lambda **kw: HubSpotConnector("pat-token", host="http://127.0.0.1:9", mapping=MAPPING["hubspot"], **kw)
    pro, starter = build(tier="professional"), build(tier="starter")
    assert (pro._burst.budget, pro._burst.window) == (190, 10.0)  # not 180: the whole allowance
    assert (starter._burst.budget, pro._search_pacer.budget, pro._search_pacer.window) == (100, 5, 1.0)
    kept = HubSpotConnector("pat-token", host="http://127.0.0.1:8", mapping=MAPPING["hubspot"], pacing_margin=0.1)
    assert kept._burst.budget == 171 and kept._search_pacer.window == pytest.approx(1 / 0.9)


def test_given_requests_in_flight_then_the_pacer_counts_them_until_their_answer_has_aged_a_whole_window():
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    pacer = _Pacer(budget=2, window=10.0, clock=lambda: now[0], sleep=sleep)
    first = pacer.slot()
    now[0] += 3.0  # the answer takes 3 s: HubSpot may count the request at any moment of those
    pacer.release(first)
    pacer.wait()
    pacer.slot()  # third request: waits until the first answer is 10 s old, not the first send
    assert now[0] == pytest.approx(13.0)
