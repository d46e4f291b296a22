"""The Salesforce emulator driven by simple-salesforce over TLS on 127.0.0.1."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (SalesforceExpiredSession, SalesforceMalformedRequest,
                                          SalesforceRefusedRequest, SalesforceResourceNotFound)

from healthsync.connectors.sandbox import Sandbox
from sandbox_helpers import sf_client, sf_session, tiny_portfolio

HEALTH_SCORE = {"FullName": "Account.Health_Score__c",
                "Metadata": {"type": "Number", "precision": 5, "scale": 1, "label": "Health Score"}}
TASK_KEY = {"FullName": "Activity.Healthsync_Key__c",
            "Metadata": {"type": "Text", "length": 80, "externalId": True, "unique": True, "label": "Key"}}


def grant(sf, sobject_fields: list[str]) -> None:
    """Field-level security the way `crm setup` grants it: a permission set, its FieldPermissions, an assignment."""
    me = sf.session.get(f"https://{sf.sf_instance}/services/oauth2/userinfo",
                        headers={"Authorization": "Bearer " + sf.session_id}).json()["user_id"]
    found = sf.query("SELECT Id FROM PermissionSet WHERE Name = 'Test_Grants'")["records"]
    ps = found[0]["Id"] if found else sf.PermissionSet.create({"Name": "Test_Grants", "Label": "Test grants"})["id"]
    for field in sobject_fields:
        sf.FieldPermissions.create({"ParentId": ps, "SobjectType": field.split(".")[0], "Field": field,
                                    "PermissionsRead": True, "PermissionsEdit": True})
    if not sf.query(f"SELECT Id FROM PermissionSetAssignment WHERE PermissionSetId = '{ps}' AND AssigneeId = '{me}'")["records"]:
        sf.PermissionSetAssignment.create({"PermissionSetId": ps, "AssigneeId": me})


def test_seeded_records_carry_the_mapped_canonical_values(sandbox):
    sf = sf_client(sandbox)
    acc = sf.query("SELECT Id, Name, ARR__c, Segment__c, Renewal_Date__c, Website, Owner.Email "
                   "FROM Account WHERE Name = 'Acme 4'")["records"][0]
    assert acc["ARR__c"] == 5000.0 and acc["Segment__c"] == "mid_market"
    assert acc["Renewal_Date__c"] == "2027-01-05" and acc["Website"] == "acme4.example.com"
    assert acc["Owner"]["Email"] == "mgr.two@example.com"
    assert len(acc["Id"]) == 18 and acc["Id"].startswith("001")
    opps = sf.query(f"SELECT Probability, Type, IsWon, StageName FROM Opportunity WHERE AccountId = '{acc['Id']}' "
                    f"ORDER BY Amount")["records"]
    assert [(o["Probability"], o["Type"], o["IsWon"]) for o in opps] == [(60.0, "Renewal", False),
                                                                        (100.0, "Existing Business", True)]
    case = sf.query(f"SELECT Priority, Status, CreatedDate, IsEscalated FROM Case WHERE AccountId = '{acc['Id']}'")
    assert case["records"][0]["Priority"] == "High"  # ticket 4 is P2
    assert case["records"][0]["CreatedDate"] == "2026-11-01T12:00:00.000+0000"
    users = sf.query("SELECT Email, Manager.Email FROM User WHERE Email LIKE '%example.com' ORDER BY Email")
    assert [(u["Email"], u["Manager"] and u["Manager"]["Email"]) for u in users["records"]] == [
        ("csm.one@example.com", "mgr.two@example.com"), ("mgr.two@example.com", "vp.three@example.com"),
        ("vp.three@example.com", None)]


def test_soql_subset_filters_sorts_and_limits(sandbox):
    sf = sf_client(sandbox)
    q = ("SELECT Name FROM Account WHERE (Segment__c IN ('enterprise', 'smb') AND ARR__c >= 20000) "
         "OR Name LIKE 'acme 1_' ORDER BY ARR__c DESC LIMIT 4")
    assert [r["Name"] for r in sf.query(q)["records"]] == ["Acme 29", "Acme 27", "Acme 26", "Acme 24"]
    assert sf.query("SELECT COUNT() FROM Account WHERE Segment__c != 'smb'")["totalSize"] == 20
    assert sf.query("SELECT Id FROM Account WHERE NPS__c = null")["totalSize"] == 0
    with pytest.raises(SalesforceMalformedRequest) as bad:
        sf.query("SELECT Id FROM Account WHERE")
    assert bad.value.content[0]["errorCode"] == "MALFORMED_QUERY"
    with pytest.raises(SalesforceMalformedRequest) as bad:
        sf.query("SELECT Nope__c FROM Account")
    assert bad.value.content[0]["errorCode"] == "INVALID_FIELD"


def test_incremental_query_on_systemmodstamp_sees_only_later_changes(sandbox):
    sf = sf_client(sandbox)
    sandbox.advance_clock(3600)
    mark = sandbox.clock.now().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    target = sf.query("SELECT Id FROM Account WHERE Name = 'Acme 7'")["records"][0]["Id"]
    sandbox.modify("salesforce", "Account", target, {"ARR__c": 123.0})
    changed = sf.query(f"SELECT Id, ARR__c, SystemModstamp FROM Account WHERE SystemModstamp > {mark} "
                       f"ORDER BY SystemModstamp")["records"]
    assert [(c["Id"], c["ARR__c"]) for c in changed] == [(target, 123.0)]
    assert changed[0]["SystemModstamp"] > mark.replace("Z", "")


def test_paging_across_pages_with_batch_size_and_locator():
    with Sandbox(portfolio=tiny_portfolio(2500)) as sb:
        sf = sf_client(sb)
        seq = sb.recorder.last_seq
        res = sf.query_all("SELECT Id FROM Account")
        assert res["totalSize"] == 2500 and len({r["Id"] for r in res["records"]}) == 2500
        counts = sb.requests(since=seq)["counts"]["salesforce"]
        assert counts == {"GET query": 1, "GET query (next page)": 1}
        first = sf.query("SELECT Id FROM Account", headers={"Sforce-Query-Options": "batchSize=500"})
        assert len(first["records"]) == 500 and first["nextRecordsUrl"].startswith("/services/data/v59.0/query/01g")
        more = sf.query_more(first["nextRecordsUrl"], identifier_is_url=True)
        assert len(more["records"]) == 500 and more["records"][0]["Id"] != first["records"][0]["Id"]


def test_crud_upsert_and_custom_fields_via_tooling(sandbox):
    sf = sf_client(sandbox)
    acc_id = sf.query("SELECT Id FROM Account WHERE Name = 'Acme 0'")["records"][0]["Id"]
    with pytest.raises(SalesforceMalformedRequest) as missing:
        sf.Account.update(acc_id, {"Health_Score__c": 42})
    assert missing.value.content[0]["errorCode"] == "INVALID_FIELD"
    created = sf.restful("tooling/sobjects/CustomField", method="POST", json=HEALTH_SCORE)
    assert created["success"] is True and created["id"].startswith("00N")
    with pytest.raises(SalesforceMalformedRequest) as dup:
        sf.restful("tooling/sobjects/CustomField", method="POST", json=HEALTH_SCORE)
    assert dup.value.content[0]["errorCode"] == "DUPLICATE_DEVELOPER_NAME"
    grant(sf, ["Account.Health_Score__c"])
    assert "Health_Score__c" in [f["name"] for f in sf.Account.describe()["fields"]]
    assert sf.Account.update(acc_id, {"Health_Score__c": 42}) == 204
    assert sf.Account.get(acc_id)["Health_Score__c"] == 42
    with pytest.raises(SalesforceMalformedRequest) as typed:
        sf.Account.update(acc_id, {"Health_Score__c": "high"})
    assert typed.value.content[0]["errorCode"] == "INVALID_TYPE_ON_FIELD_IN_RECORD"

    sf.restful("tooling/sobjects/CustomField", method="POST", json=TASK_KEY)
    grant(sf, ["Task.Healthsync_Key__c"])
    assert sf.Task.upsert("Healthsync_Key__c/k-1", {"Subject": "Call", "WhatId": acc_id}) == 201
    assert sf.Task.upsert("Healthsync_Key__c/k-1", {"Subject": "Call back"}) == 200
    tasks = sf.query("SELECT Id, Subject, AccountId, Status FROM Task")["records"]
    assert [(t["Subject"], t["AccountId"], t["Status"]) for t in tasks] == [("Call back", acc_id, "Not Started")]
    new = sf.Account.create({"Name": "Fresh"})
    assert sf.Account.delete(new["id"]) == 204
    with pytest.raises(SalesforceResourceNotFound):
        sf.Account.get(new["id"])
    assert sf.query(f"SELECT Id FROM Account WHERE Id = '{new['id']}'")["totalSize"] == 0
    deleted = sf.query_all(f"SELECT Id, IsDeleted FROM Account WHERE Id = '{new['id']}'", include_deleted=True)
    assert deleted["records"][0]["IsDeleted"] is True


def test_composite_collections_partial_failure_all_or_none_and_size_cap():
    with Sandbox(portfolio=tiny_portfolio(30), precreate_fields=True) as sb:
        sf = sf_client(sb)
        ids = [r["Id"] for r in sf.query("SELECT Id FROM Account ORDER BY Name LIMIT 3")["records"]]
        recs = [{"attributes": {"type": "Account"}, "id": ids[0], "Health_Score__c": 80},
                {"attributes": {"type": "Account"}, "id": ids[1], "Health_Score__c": "not a number"},
                {"attributes": {"type": "Account"}, "id": ids[2], "Health_Band__c": "green"}]
        res = sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": False, "records": recs})
        assert [r["success"] for r in res] == [True, False, True]
        assert res[1]["errors"][0]["statusCode"] == "INVALID_TYPE_ON_FIELD_IN_RECORD"
        assert res[1]["errors"][0]["fields"] == ["Health_Score__c"]
        assert sb.record("salesforce", "Account", ids[0])["Health_Score__c"] == 80

        recs[0]["Health_Score__c"] = 10
        res = sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": True, "records": recs})
        assert [r["success"] for r in res] == [False, False, False]
        assert res[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
        assert sb.record("salesforce", "Account", ids[0])["Health_Score__c"] == 80  # rolled back

        made = sf.restful("composite/sobjects", method="POST", json={"records": [
            {"attributes": {"type": "Task"}, "Subject": "QBR", "WhatId": ids[0], "Healthsync_Key__c": "x1"}]})
        assert made[0]["success"] and made[0]["id"].startswith("00T")
        up = sf.restful("composite/sobjects/Task/Healthsync_Key__c", method="PATCH", json={"records": [
            {"attributes": {"type": "Task"}, "Healthsync_Key__c": "x1", "Status": "Completed"},
            {"attributes": {"type": "Task"}, "Healthsync_Key__c": "x2", "Subject": "New"}]})
        assert [(r["success"], r["created"]) for r in up] == [(True, False), (True, True)]
        assert sb.record("salesforce", "Task", made[0]["id"])["IsClosed"] is True

        too_many = [{"attributes": {"type": "Account"}, "Name": f"n{i}"} for i in range(201)]
        with pytest.raises(SalesforceMalformedRequest) as cap:
            sf.restful("composite/sobjects", method="POST", json={"records": too_many})
        assert cap.value.content[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
        assert sf.query("SELECT COUNT() FROM Account WHERE Name LIKE 'n%'")["totalSize"] == 0


def test_bulk2_upsert_reports_failed_rows_as_csv():
    with Sandbox(portfolio=tiny_portfolio(30), precreate_fields=True) as sb:
        sf = sf_client(sb)
        acc = sf.query("SELECT Id FROM Account LIMIT 2")["records"]
        rows = [{"Healthsync_Key__c": "b1", "Subject": "Renewal call", "WhatId": acc[0]["Id"]},
                {"Healthsync_Key__c": "b2", "Subject": "QBR", "WhatId": acc[1]["Id"]},
                {"Healthsync_Key__c": "b3", "Subject": "Broken", "WhatId": "001000000000000AAA"}]
        out = sf.bulk2.Task.upsert(records=rows, external_id_field="Healthsync_Key__c", wait=0.05)
        assert out[0]["numberRecordsProcessed"] == 3 and out[0]["numberRecordsFailed"] == 1
        results = sf.bulk2.Task.get_all_ingest_records(out[0]["job_id"])
        assert sorted(r["Healthsync_Key__c"] for r in results["successfulRecords"]) == ["b1", "b2"]
        assert {r["sf__Created"] for r in results["successfulRecords"]} == {"true"}
        failed = results["failedRecords"]
        assert len(failed) == 1 and failed[0]["Healthsync_Key__c"] == "b3"
        assert failed[0]["sf__Error"].startswith("INVALID_CROSS_REFERENCE_KEY:")
        assert results["unprocessedRecords"] == []
        assert sorted(t["Healthsync_Key__c"] for t in sb.records("salesforce", "Task")) == ["b1", "b2"]
        again = sf.bulk2.Task.upsert(records=rows[:1], external_id_field="Healthsync_Key__c", wait=0.05)
        second = sf.bulk2.Task.get_all_ingest_records(again[0]["job_id"])
        assert second["successfulRecords"][0]["sf__Created"] == "false"


def test_limits_header_and_quota_exhaustion():
    with Sandbox(portfolio=tiny_portfolio(3), salesforce_daily_limit=5) as sb:
        sf = sf_client(sb)
        sf.query("SELECT Id FROM Account")
        assert sf.api_usage["api-usage"].used == 1 and sf.api_usage["api-usage"].total == 5
        assert sf.limits()["DailyApiRequests"] == {"Max": 5, "Remaining": 3}
        for _ in range(3):
            sf.query("SELECT Id FROM Account")
        with pytest.raises(SalesforceRefusedRequest) as refused:
            sf.query("SELECT Id FROM Account")
        assert refused.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
        sb.advance_clock(86400)  # a new day resets the daily quota
        assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 3


def _rewriting_session(sb: Sandbox) -> requests.Session:
    """Send simple-salesforce's hard-coded https://*.salesforce.com calls to the sandbox (crm-api-notes 1.1 option 2)."""
    port = sb.ready["salesforce"]["instance_url"].rsplit(":", 1)[1]

    class Rewrite(requests.adapters.HTTPAdapter):
        def send(self, request, **kw):
            host = request.url.split("/")[2]
            if host.endswith(".salesforce.com"):
                request.url = request.url.replace(host, f"127.0.0.1:{port}", 1)
            return super().send(request, **kw)

    s = sf_session(sb)
    s.mount("https://", Rewrite())
    return s


def test_expired_session_is_refreshed_by_password_login():
    with Sandbox(portfolio=tiny_portfolio(3)) as sb:
        r = sb.ready["salesforce"]
        sb.set_faults(api="salesforce", session_expiry_after=2)
        sf = Salesforce(username=r["username"], password=r["password"], consumer_key=r["consumer_key"],
                        consumer_secret="unused-by-the-sandbox", session=_rewriting_session(sb))
        assert sf.sf_instance == r["instance_url"].split("://")[1]
        for _ in range(5):  # every third call meets an expired session; the client logs in again and retries
            assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 3
        reqs = sb.requests()["requests"]
        assert [q["status"] for q in reqs if q["status"] == 401] == [401, 401]
        assert sum(q["endpoint"] == "POST /services/oauth2/token" for q in reqs) == 3
        direct = sf_client(sb)  # a bare session id cannot refresh: the expiry surfaces
        direct.query("SELECT Id FROM Account")
        direct.query("SELECT Id FROM Account")
        with pytest.raises(SalesforceExpiredSession):
            direct.query("SELECT Id FROM Account")


def test_jwt_bearer_login_accepts_the_string_exp_and_rejects_strangers():
    with Sandbox(portfolio=tiny_portfolio(3)) as sb:
        r = sb.ready["salesforce"]
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        sf = Salesforce(username="csm.one@example.com", consumer_key=r["consumer_key"], privatekey=pem,
                        session=_rewriting_session(sb))
        assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 3
        bad = requests.post(r["instance_url"] + "/services/oauth2/token", verify=r["ca_file"],
                            data={"grant_type": "password", "client_id": r["consumer_key"], "username": r["username"],
                                  "password": "wrong"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
        unknown = requests.get(r["instance_url"] + "/services/data/v59.0/limits/", verify=r["ca_file"],
                               headers={"Authorization": "Bearer nope"})
        assert unknown.status_code == 401 and unknown.json()[0]["errorCode"] == "INVALID_SESSION_ID"


def test_global_describe_metadata_external_id_read_and_collection_delete():
    with Sandbox(portfolio=tiny_portfolio(5), precreate_fields=True) as sb:
        sf = sf_client(sb)
        described = sf.describe()
        assert {o["name"]: o["keyPrefix"] for o in described["sobjects"]} == {
            "Account": "001", "Opportunity": "006", "Case": "500", "Task": "00T", "User": "005",
            "PermissionSet": "0PS", "FieldPermissions": "01k", "PermissionSetAssignment": "0Pa"}
        assert sf.Account.metadata()["objectDescribe"]["name"] == "Account"
        key_field = next(f for f in sf.Task.describe()["fields"] if f["name"] == "Healthsync_Key__c")
        assert key_field["externalId"] and key_field["unique"] and key_field["custom"]
        sf.Task.upsert("Healthsync_Key__c/a b", {"Subject": "spaces in the key"})
        assert sf.Task.get_by_custom_id("Healthsync_Key__c", "a b")["Subject"] == "spaces in the key"
        ids = [r["Id"] for r in sf.query("SELECT Id FROM Account ORDER BY Name LIMIT 2")["records"]]
        res = sf.restful(f"composite/sobjects?ids={ids[0]},001000000000000AAA&allOrNone=false", method="DELETE")
        assert [r["success"] for r in res] == [True, False]
        assert res[1]["errors"][0]["statusCode"] == "INVALID_CROSS_REFERENCE_KEY"
        assert sb.record("salesforce", "Account", ids[0])["IsDeleted"] is True
        assert sf.query("SELECT COUNT() FROM Account")["totalSize"] == 4


def test_derived_fields_follow_only_the_fields_written():
    with Sandbox(portfolio=tiny_portfolio(3), precreate_fields=True) as sb:
        sf = sf_client(sb)
        opp = sf.query("SELECT Id, IsClosed FROM Opportunity WHERE StageName = 'Closed Won' LIMIT 1")["records"][0]
        sb.salesforce.records["Opportunity"][opp["Id"]]["StageName"] = "Renewal Signed"  # a customised stage name
        sf.Opportunity.update(opp["Id"], {"Health_Adjusted_Probability__c": 0.9})
        assert sb.record("salesforce", "Opportunity", opp["Id"])["IsClosed"] is True  # untouched by the write-back
        sf.Opportunity.update(opp["Id"], {"StageName": "Negotiation"})
        assert sb.record("salesforce", "Opportunity", opp["Id"])["IsClosed"] is False
        sf.Opportunity.update(opp["Id"], {"StageName": "Closed Won"})
        assert sb.record("salesforce", "Opportunity", opp["Id"])["IsWon"] is True
        case = sf.query("SELECT Id FROM Case WHERE Status = 'New' LIMIT 1")["records"][0]["Id"]
        sf.Case.update(case, {"Status": "Closed"})
        closed = sb.record("salesforce", "Case", case)
        assert closed["IsClosed"] is True and closed["ClosedDate"] is not None
