"""The HubSpot emulator driven by hubspot-api-client (host= pointed at 127.0.0.1)."""

from __future__ import annotations

import json
import time

import pytest
from hubspot.crm.associations.v4 import AssociationSpec
from hubspot.crm.companies import (ApiException, BatchInputSimplePublicObjectBatchInput,
                                   BatchReadInputSimplePublicObjectId, PublicObjectSearchRequest,
                                   SimplePublicObjectInputForCreate)
from hubspot.crm.objects.tasks import BatchInputSimplePublicObjectBatchInputUpsert
from hubspot.crm.properties import PropertyCreate, PropertyGroupCreate
from urllib3.util.retry import Retry

from healthsync.connectors.sandbox import Sandbox
from sandbox_helpers import hs_client, tiny_portfolio


def _company(hs, name: str):
    res = hs.crm.companies.search_api.do_search(public_object_search_request=PublicObjectSearchRequest(
        filter_groups=[{"filters": [{"propertyName": "name", "operator": "EQ", "value": name}]}],
        properties=["name", "arr", "domain", "hubspot_owner_id", "renewal_date", "exec_sponsor"]))
    assert res.total == 1
    return res.results[0]


def test_seeded_companies_deals_tickets_and_owners(sandbox):
    hs = hs_client(sandbox)
    c = _company(hs, "Acme 4")
    assert c.properties["arr"] == "5000" and c.properties["domain"] == "acme4.example.com"
    assert c.properties["renewal_date"] == "2027-01-05" and c.properties["exec_sponsor"] == "partial"
    owner = hs.crm.owners.owners_api.get_by_id(owner_id=c.properties["hubspot_owner_id"])
    assert owner.email == "mgr.two@example.com"
    owners = hs.crm.owners.owners_api.get_page(email="vp.three@example.com")
    assert [o.first_name for o in owners.results] == ["Vic"]
    deals = hs.crm.deals.basic_api.get_page(limit=2, properties=["dealname", "hs_deal_stage_probability",
                                                                  "dealtype", "hs_is_closed_won"],
                                            associations=["companies"])
    assert [(d.properties["hs_deal_stage_probability"], d.properties["dealtype"], d.properties["hs_is_closed_won"])
            for d in deals.results] == [("0.6", "renewal", "false"), ("1", "existingbusiness", "true")]
    first_company = deals.results[0].associations["companies"].results[0].id
    assert hs.crm.companies.basic_api.get_by_id(first_company).properties["name"] == "Acme 0"
    t = hs.crm.tickets.basic_api.get_page(limit=1, properties=["hs_ticket_priority", "hs_pipeline_stage",
                                                               "escalated", "createdate"]).results[0]
    assert t.properties == {**t.properties, "hs_ticket_priority": "URGENT", "hs_pipeline_stage": "1",
                            "escalated": "true", "createdate": "2026-11-01T08:00:00.000Z"}


def test_list_paging_with_after_and_repeated_properties(sandbox):
    hs = hs_client(sandbox)
    seen, after, pages = [], None, 0
    while True:
        page = hs.crm.companies.basic_api.get_page(limit=7, after=after, properties=["name", "segment"])
        pages += 1
        seen += [r.properties["name"] for r in page.results]
        if not page.paging:
            break
        after = page.paging.next.after
    assert pages == 5 and len(seen) == 30 and len(set(seen)) == 30
    assert len(hs.crm.companies.get_all()) == 30
    with pytest.raises(ApiException) as too_big:
        hs.crm.companies.basic_api.get_page(limit=101)
    assert too_big.value.status == 400


def test_create_update_archive_and_archived_listing(sandbox):
    hs = hs_client(sandbox)
    created = hs.crm.companies.basic_api.create(SimplePublicObjectInputForCreate(properties={"name": "Newco",
                                                                                             "arr": "12.5"}))
    assert created is not None and created.properties["arr"] == "12.5"  # None would mean a non-201 status
    before = created.properties["hs_lastmodifieddate"]
    sandbox.advance_clock(60)
    updated = hs.crm.companies.basic_api.update(created.id, {"properties": {"arr": "99"}})
    assert updated.properties["arr"] == "99" and updated.properties["hs_lastmodifieddate"] > before
    with pytest.raises(ApiException) as unknown:
        hs.crm.companies.basic_api.update(created.id, {"properties": {"health_score": "80"}})
    assert unknown.value.status == 400 and "PROPERTY_DOESNT_EXIST" in unknown.value.body
    with pytest.raises(ApiException) as bad_number:
        hs.crm.companies.basic_api.update(created.id, {"properties": {"arr": "lots"}})
    assert json.loads(bad_number.value.body)["category"] == "VALIDATION_ERROR"
    hs.crm.companies.basic_api.archive(created.id)
    archived = hs.crm.companies.basic_api.get_page(archived=True)
    assert [r.id for r in archived.results] == [created.id] and archived.results[0].archived is True
    assert created.id not in [r.id for r in hs.crm.companies.get_all()]


def test_batch_read_update_create_with_207_partial_results(sandbox):
    hs = hs_client(sandbox)
    ids = [r.id for r in hs.crm.companies.basic_api.get_page(limit=2).results]
    read = hs.crm.companies.batch_api.read(BatchReadInputSimplePublicObjectId(
        inputs=[{"id": ids[0]}, {"id": "999"}, {"id": ids[1]}, {"id": "998"}], properties=["name"]))
    assert sorted(r.id for r in read.results) == sorted(ids)
    assert read.num_errors == 1 and read.errors[0].category == "OBJECT_NOT_FOUND"
    assert read.errors[0].context == {"ids": ["999", "998"]}
    upd = hs.crm.companies.batch_api.update(BatchInputSimplePublicObjectBatchInput(inputs=[
        {"id": ids[0], "properties": {"arr": "1"}}, {"id": "12345", "properties": {"arr": "2"}}]))
    assert upd.num_errors == 1 and upd.errors[0].context == {"ids": ["12345"]}
    assert sandbox.record("hubspot", "companies", ids[0])["properties"]["arr"] == "1"
    made = hs.crm.companies.batch_api.create({"inputs": [{"properties": {"name": f"B{i}"}} for i in range(3)]})
    assert made is not None and made.status == "COMPLETE" and len(made.results) == 3  # 201
    with pytest.raises(ApiException) as too_many:
        hs.crm.companies.batch_api.create({"inputs": [{"properties": {"name": "x"}}] * 101})
    assert too_many.value.status == 400


def test_properties_groups_and_upsert_by_unique_property(sandbox):
    hs = hs_client(sandbox)
    group = hs.crm.properties.groups_api.create("tasks", PropertyGroupCreate(name="healthsync", label="Healthsync"))
    assert group is not None and group.name == "healthsync"  # 201
    with pytest.raises(Exception) as dup_group:
        hs.crm.properties.groups_api.create("tasks", PropertyGroupCreate(name="healthsync", label="Healthsync"))
    assert dup_group.value.status == 409
    unique = PropertyCreate(name="healthsync_key", label="Healthsync key", type="string", field_type="text",
                            group_name="healthsync", has_unique_value=True)
    with pytest.raises(Exception) as refused:  # unique properties: companies, deals, tickets, contacts, custom objects
        hs.crm.properties.core_api.create("tasks", unique)
    assert refused.value.status == 400 and "hasUniqueValue" in json.loads(refused.value.body)["message"]
    spec = PropertyCreate(name="healthsync_key", label="Healthsync key", type="string", field_type="text",
                          group_name="healthsync")
    prop = hs.crm.properties.core_api.create("tasks", spec)
    assert prop is not None and prop.has_unique_value is False
    with pytest.raises(Exception) as dup_prop:
        hs.crm.properties.core_api.create("tasks", spec)
    assert dup_prop.value.status == 409 and json.loads(dup_prop.value.body)["category"] == "CONFLICT"
    hs.crm.properties.groups_api.create("companies", PropertyGroupCreate(name="healthsync", label="Healthsync"))
    ext = hs.crm.properties.core_api.create("companies", PropertyCreate(
        name="ext_key", label="Ext key", type="string", field_type="text", group_name="healthsync", has_unique_value=True))
    assert ext.has_unique_value is True
    company = hs.crm.companies.basic_api.get_page(limit=1).results[0].id
    body = {"inputs": [{"idProperty": "ext_key", "id": "k1", "properties": {"name": "Upserted Co"}}]}
    first = hs.crm.objects.batch_api.upsert("companies", BatchInputSimplePublicObjectBatchInputUpsert(**body))
    body["inputs"][0]["properties"]["name"] = "Upserted Co 2"
    second = hs.crm.objects.batch_api.upsert("companies", BatchInputSimplePublicObjectBatchInputUpsert(**body))
    assert first.results[0].new is True and second.results[0].new is False
    assert first.results[0].id == second.results[0].id
    assert sandbox.record("hubspot", "companies", first.results[0].id)["properties"]["name"] == "Upserted Co 2"
    with pytest.raises(Exception) as not_unique:
        hs.crm.objects.tasks.batch_api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs=[
            {"idProperty": "healthsync_key", "id": "k1", "properties": {"hs_timestamp": "2026-12-01T00:00:00Z"}}]))
    assert not_unique.value.status == 400
    created = hs.crm.objects.tasks.basic_api.create({"properties": {"hs_timestamp": "2026-12-01T00:00:00Z", "healthsync_key": "k1"}})
    tasks = sandbox.records("hubspot", "tasks")
    assert len(tasks) == 1 and tasks[0]["id"] == created.id
    link = hs.crm.associations.v4.basic_api.create(
        object_type="tasks", object_id=tasks[0]["id"], to_object_type="companies", to_object_id=company,
        association_spec=[AssociationSpec(association_category="HUBSPOT_DEFINED", association_type_id=192)])
    assert link is not None and str(link.to_object_id) == company  # 201
    got = hs.crm.objects.tasks.basic_api.get_by_id(tasks[0]["id"], associations=["companies"])
    assert [a.id for a in got.associations["companies"].results] == [company]
    back = hs.crm.associations.v4.basic_api.get_page("companies", company, "tasks")
    assert [str(r.to_object_id) for r in back.results] == [tasks[0]["id"]]
    inline = hs.crm.objects.tasks.basic_api.create({"properties": {"hs_timestamp": "1790000000000"},
                                                    "associations": [{"to": {"id": company}, "types": [
                                                        {"associationCategory": "HUBSPOT_DEFINED",
                                                         "associationTypeId": 192}]}]})
    assert sandbox.record("hubspot", "tasks", inline.id)["associations"] == {"companies": [company]}


def test_search_filters_sorts_paging_cap_and_secondly_limit(sandbox):
    hs = hs_client(sandbox)

    def search(**kw):
        return hs.crm.companies.search_api.do_search(public_object_search_request=PublicObjectSearchRequest(**kw))

    req = dict(filter_groups=[{"filters": [{"propertyName": "arr", "operator": "GT", "value": "20000"},
                                           {"propertyName": "segment", "operator": "IN",
                                            "values": ["enterprise", "smb"]}]},
                              {"filters": [{"propertyName": "name", "operator": "EQ", "value": "acme 1"}]}],
               sorts=[{"propertyName": "arr", "direction": "DESCENDING"}], properties=["name"], limit=3)
    page1 = search(**req)
    assert page1.total == 8 and [r.properties["name"] for r in page1.results] == ["Acme 29", "Acme 27", "Acme 26"]
    page2 = search(**req, after=page1.paging.next.after)
    assert [r.properties["name"] for r in page2.results] == ["Acme 24", "Acme 23", "Acme 21"]
    time.sleep(1.05)
    with pytest.raises(ApiException) as capped:
        search(limit=100, after="9950")
    assert capped.value.status == 400
    statuses = []
    for _ in range(4):
        try:
            search(limit=1)
            statuses.append(200)
        except ApiException as e:
            statuses.append(e.status)
            assert json.loads(e.body)["policyName"] == "SECONDLY"
    assert statuses == [200, 200, 200, 200] or 429 in statuses
    time.sleep(1.05)
    for _ in range(5):
        search(limit=1)
    with pytest.raises(ApiException) as limited:
        search(limit=1)
    assert limited.value.status == 429 and json.loads(limited.value.body)["policyName"] == "SECONDLY"


def test_ten_second_window_per_tier_with_headers_and_429_body():
    with Sandbox(portfolio=tiny_portfolio(3), hubspot_tier="starter") as sb:
        hs = hs_client(sb)
        _, status, headers = hs.crm.companies.basic_api.get_page_with_http_info(limit=1)
        assert status == 200 and headers["X-HubSpot-RateLimit-Max"] == "100"
        assert headers["X-HubSpot-RateLimit-Remaining"] == "99"
        assert headers["X-HubSpot-RateLimit-Daily"] == "250000"
        for _ in range(99):
            hs.crm.companies.basic_api.get_page(limit=1)
        with pytest.raises(ApiException) as limited:
            hs.crm.companies.basic_api.get_page(limit=1)
        body = json.loads(limited.value.body)
        assert limited.value.status == 429 and body["policyName"] == "TEN_SECONDLY_ROLLING"
        assert body["errorType"] == "RATE_LIMIT" and body["message"] == "You have reached your ten_secondly_rolling limit."


def test_daily_limit_and_429_burst_then_success_with_retry():
    with Sandbox(portfolio=tiny_portfolio(3), hubspot_daily_limit=3) as sb:
        sb.set_faults(api="hubspot", burst_429=2, retry_after=0)
        retry = Retry(total=3, status_forcelist=(429,), allowed_methods=None, raise_on_status=False,
                      respect_retry_after_header=True, backoff_factor=0)
        hs = hs_client(sb, retry=retry)
        seq = sb.recorder.last_seq
        assert len(hs.crm.companies.basic_api.get_page(limit=5).results) == 3
        assert [r["status"] for r in sb.requests(since=seq)["requests"]] == [429, 429, 200]
        plain = hs_client(sb)  # no retries: a DAILY 429 says Retry-After 60
        plain.crm.companies.basic_api.get_page(limit=1)
        plain.crm.companies.basic_api.get_page(limit=1)
        with pytest.raises(ApiException) as daily:
            plain.crm.companies.basic_api.get_page(limit=1)
        assert daily.value.status == 429 and json.loads(daily.value.body)["policyName"] == "DAILY"


def test_wrong_token_is_401(sandbox):
    import hubspot
    bad = hubspot.HubSpot(access_token="pat-wrong", host=sandbox.ready["hubspot"]["host"])
    with pytest.raises(Exception) as denied:
        bad.crm.companies.basic_api.get_page()
    assert denied.value.status == 401


def test_seeded_associations_read_from_both_ends_and_delete_cleanly(sandbox):
    hs = hs_client(sandbox)
    company = _company(hs, "Acme 2").id
    got = hs.crm.companies.basic_api.get_by_id(company, associations=["deals", "tickets"])
    deals = sorted(a.id for a in got.associations["deals"].results)
    assert len(deals) == 2 and len(got.associations["tickets"].results) == 1
    assert {a.type for a in got.associations["deals"].results} == {"company_to_deal"}
    hs.crm.associations.v4.basic_api.archive("deals", deals[0], "companies", company)
    gone = hs.crm.deals.basic_api.get_by_id(deals[0], associations=["companies"])
    assert gone.associations is None
    kept = hs.crm.deals.basic_api.get_by_id(deals[1], associations=["companies"])
    assert [a.id for a in kept.associations["companies"].results] == [company]
    after = hs.crm.associations.v4.basic_api.get_page("companies", company, "deals")
    assert [str(r.to_object_id) for r in after.results] == [deals[1]]


def test_v4_batch_associations_property_listing_and_batch_archive(sandbox):
    from hubspot.crm.associations.v4 import BatchInputPublicFetchAssociationsBatchRequest
    hs = hs_client(sandbox)
    deals = [d.id for d in hs.crm.deals.basic_api.get_page(limit=3).results]
    links = hs.crm.associations.v4.batch_api.get_page(
        "deals", "companies", BatchInputPublicFetchAssociationsBatchRequest(inputs=[{"id": d} for d in deals]))
    by_deal = {r._from.id: [str(t.to_object_id) for t in r.to] for r in links.results}
    company0 = _company(hs, "Acme 0").id
    assert by_deal[deals[0]] == [company0] and by_deal[deals[1]] == [company0]
    assert by_deal[deals[2]] == [_company(hs, "Acme 1").id]
    made = hs.crm.associations.v4.batch_api.create("tasks", "companies", {"inputs": []})
    assert made is not None and made.results == []  # 201 with nothing to do
    names = {p.name for p in hs.crm.properties.core_api.get_all("companies").results}
    assert {"name", "domain", "arr", "segment", "hubspot_owner_id"} <= names and "health_score" not in names
    assert [g.name for g in hs.crm.properties.groups_api.get_all("companies").results] == ["companyinformation"]
    hs.crm.deals.batch_api.archive({"inputs": [{"id": deals[0]}, {"id": "404"}]})
    assert sandbox.record("hubspot", "deals", deals[0])["archived"] is True
    again = hs.crm.associations.v4.batch_api.get_page(
        "companies", "deals", BatchInputPublicFetchAssociationsBatchRequest(inputs=[{"id": company0}]))
    assert [str(t.to_object_id) for t in again.results[0].to] == [deals[1]]  # archived deals are not listed
