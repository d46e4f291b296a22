"""The HubSpot emulator's search as strict as HubSpot's, and its seeded modification times (BEHAVIOR.md "Search").

Driven by hubspot-api-client (host= pointed at 127.0.0.1).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta

import pytest
from hubspot.crm.companies import ApiException, PublicObjectSearchRequest

from healthsync.connectors.sandbox import Sandbox
from healthsync.connectors.sandbox.clock import hs_datetime
from sandbox_helpers import hs_client


def _search(hs, **kw):
    return hs.crm.companies.search_api.do_search(public_object_search_request=PublicObjectSearchRequest(**kw))


def _since(sb) -> str:
    return str(int(sb.clock.now().timestamp() * 1000))


def test_given_offset_paging_when_a_record_is_edited_after_page_one_then_one_record_is_never_returned():
    # the probe of issue 12 item 2: `after` is an offset into a result set recomputed for every page
    with Sandbox(accounts=0, search_lag_seconds=0) as sb:
        since = _since(sb)
        ids = [sb.create("hubspot", "companies", {"name": f"Company {i}"}) for i in range(320)]
        hs = hs_client(sb)
        query = dict(filter_groups=[{"filters": [{"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": since}]}],
                     sorts=[{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}], properties=["name"], limit=200)
        page1 = _search(hs, **query)
        sb.modify("hubspot", "companies", page1.results[0].id, {"name": "Edited"})  # moves behind every other record
        page2 = _search(hs, **query, after=page1.paging.next.after)
        seen = {r.id for r in page1.results} | {r.id for r in page2.results}
        assert (len(page1.results), page2.total) == (200, 320)
        assert set(ids) - seen == {ids[200]}  # it slid into page 1's place: never returned


def test_given_more_than_one_sorting_rule_or_too_many_filters_then_search_answers_400():
    with Sandbox(accounts=0) as sb:
        hs = hs_client(sb)
        with pytest.raises(ApiException) as two_sorts:
            _search(hs, sorts=[{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"},
                               {"propertyName": "hs_object_id", "direction": "ASCENDING"}])
        assert two_sorts.value.status == 400 and "one sorting rule" in json.loads(two_sorts.value.body)["message"]
        seven = [{"propertyName": "name", "operator": "HAS_PROPERTY"}] * 7
        with pytest.raises(ApiException) as filters:
            _search(hs, filter_groups=[{"filters": seven}])
        assert filters.value.status == 400
        assert _search(hs, filter_groups=[{"filters": seven[:6]}]).total == 0


def test_given_records_sharing_the_sort_value_then_ties_do_not_come_back_in_id_order():
    # HubSpot does not document its tie order: relying on it (instead of sorting by id) must fail here
    with Sandbox(accounts=0, search_lag_seconds=0) as sb:
        ids = sb.hubspot.insert_columns("companies", {"name": ["Same"] * 50}, 50)
        got = _search(hs_client(sb), sorts=[{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}], limit=50)
        order = [r.id for r in got.results]
        assert sorted(order, key=int) == ids and order != ids


def test_given_search_lag_then_a_new_record_is_unseen_and_an_edited_one_is_seen_as_it_was_until_indexed():
    with Sandbox(accounts=0, search_lag_seconds=30) as sb:
        hs = hs_client(sb)
        an_hour_ago = hs_datetime(sb.clock.now() - timedelta(hours=1))
        old = sb.hubspot.insert_columns("companies", {"name": ["Before"]}, 1, stamps=[an_hour_ago])[0]  # indexed long ago
        sb.hubspot.delay_indexing("companies", old, 30)
        new = sb.create("hubspot", "companies", {"name": "Brand new"})
        sb.hubspot.delay_indexing("companies", new, 30)
        sb.modify("hubspot", "companies", old, {"name": "After"})
        got = {r.id: r.properties["name"] for r in _search(hs, properties=["name"]).results}
        assert got == {old: "Before"}  # the index still holds the previous version; the new record is not in it
        by_new_name = _search(hs, filter_groups=[{"filters": [{"propertyName": "name", "operator": "EQ", "value": "After"}]}])
        assert by_new_name.total == 0
        sb.advance_clock(31)
        got = {r.id: r.properties["name"] for r in _search(hs, properties=["name"]).results}
        assert got == {old: "After", new: "Brand new"}


def test_given_the_default_sandbox_then_search_lags_writes_by_up_to_two_seconds():
    with Sandbox(accounts=0) as sb:
        assert sb.hubspot.search_lag_seconds == 2.0
        hs = hs_client(sb)
        ids = [sb.create("hubspot", "companies", {"name": f"Company {i}"}) for i in range(40)]
        delays = [sb.hubspot.index_delay("companies", i, sb.record("hubspot", "companies", i)["updatedAt"]) for i in ids]
        assert all(0 <= d < 2 for d in delays) and max(delays) - min(delays) > 1  # each write waits its own share
        sb.advance_clock(2)
        assert {r.id for r in _search(hs, limit=100).results} == set(ids)


def test_given_a_thousand_and_one_ids_then_an_association_batch_read_answers_400():
    with Sandbox(accounts=2, seed=3) as sb:
        hs = hs_client(sb)
        deal = sb.records("hubspot", "deals")[0]["id"]
        from hubspot.crm.associations.v4 import ApiException as AssocApiException

        ok = hs.crm.associations.v4.batch_api.get_page("deals", "companies",
                                                        batch_input_public_fetch_associations_batch_request={"inputs": [{"id": deal}] * 1000})
        assert ok.results
        with pytest.raises(AssocApiException) as too_many:
            hs.crm.associations.v4.batch_api.get_page("deals", "companies",
                                                      batch_input_public_fetch_associations_batch_request={"inputs": [{"id": deal}] * 1001})
        assert too_many.value.status == 400


def test_given_a_seeded_portal_then_modification_times_are_spread_over_the_past_year_in_both_crms():
    with Sandbox(accounts=60, seed=9) as sb:
        now = sb.clock.now()
        for api, obj, field in (("hubspot", "tickets", None), ("hubspot", "deals", None), ("salesforce", "Case", "SystemModstamp"),
                                ("salesforce", "Account", "SystemModstamp")):
            rows = sb.records(api, obj)
            stamps = [datetime.fromisoformat((r[field] if field else r["properties"]["hs_lastmodifieddate"])
                                             .replace("Z", "+00:00").replace("+0000", "+00:00")) for r in rows]
            created = [datetime.fromisoformat((r["CreatedDate"] if field else r["properties"]["createdate"])
                                              .replace("Z", "+00:00").replace("+0000", "+00:00")) for r in rows]
            assert len(set(stamps)) > 0.95 * len(stamps), (api, obj)  # hardly two records on one instant
            assert max(stamps) <= now - timedelta(hours=1), (api, obj)
            assert min(stamps) >= min(min(created), now - timedelta(days=366)), (api, obj)  # tickets keep their own dates
            assert max(stamps) - min(stamps) > timedelta(days=30), (api, obj)
            assert all(c <= s for c, s in zip(created, stamps)), (api, obj)


def test_given_same_stamp_n_then_n_records_of_each_hubspot_object_share_the_newest_modification_time():
    with Sandbox(accounts=30, seed=9, same_stamp=25) as sb:
        for obj in ("companies", "deals", "tickets"):
            stamps = Counter(r["properties"]["hs_lastmodifieddate"] for r in sb.records("hubspot", obj))
            (shared, n), = stamps.most_common(1)
            assert n == 25 and shared == max(stamps), obj


def test_given_an_import_then_modify_many_gives_every_record_one_modification_time():
    with Sandbox(accounts=0, search_lag_seconds=0) as sb:
        ids = sb.hubspot.insert_columns("companies", {"name": ["x"] * 30}, 30)
        stamp = sb.modify_many("hubspot", "companies", ids, {"name": "Imported"})
        assert {(r["properties"]["hs_lastmodifieddate"], r["properties"]["name"]) for r in sb.records("hubspot", "companies")} \
            == {(stamp, "Imported")}
        with pytest.raises(ValueError):
            sb.modify_many("hubspot", "companies", ids, {"no_such_property": "1"})


def test_given_serve_with_same_stamp_then_the_cli_sandbox_seeds_n_records_of_each_object_on_one_instant(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import requests

    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    cmd = [str(Path(sys.executable).with_name("healthsync")), "sandbox", "serve", "--accounts", "20", "--seed", "5",
           "--same-stamp", "15", "--search-lag", "7.5", "--ready-file", str(ready)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 90
        while not ready.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.2)
        inspect = json.loads(ready.read_text())["inspect_url"]
        for obj in ("companies", "deals", "tickets"):
            stamps = Counter(r["properties"]["hs_lastmodifieddate"] for r in requests.get(f"{inspect}/state/hubspot/{obj}").json())
            assert stamps.most_common(1)[0][1] == 15, obj
        bad = subprocess.run(cmd[:3] + ["--same-stamp", "-1"], capture_output=True, text=True, env=env, timeout=60)
        assert bad.returncode == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
