"""The Salesforce emulator is at least as strict as a real org (issue 12 items 4, 6, 7, 8), through simple-salesforce.

Each behaviour and its public source is listed in connectors/sandbox/BEHAVIOR.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from simple_salesforce.exceptions import SalesforceMalformedRequest

from healthsync.connectors.sandbox import Sandbox
from sandbox_helpers import sf_client, tiny_portfolio


def _error(exc_info) -> str:
    return exc_info.value.content[0]["errorCode"]


def _me(sf) -> str:
    return sf.session.get(f"https://{sf.sf_instance}/services/oauth2/userinfo",
                          headers={"Authorization": "Bearer " + sf.session_id}).json()["user_id"]


def test_given_a_field_created_through_tooling_then_it_is_hidden_until_a_permission_set_grants_it(sandbox):
    sf = sf_client(sandbox)
    acc = sf.query("SELECT Id FROM Account LIMIT 1")["records"][0]["Id"]
    sf.restful("tooling/sobjects/CustomField", method="POST", json={
        "FullName": "Account.Health_Band__c", "Metadata": {"type": "Text", "length": 40, "label": "Health Band"}})
    assert "Health_Band__c" not in {f["name"] for f in sf.Account.describe()["fields"]}
    with pytest.raises(SalesforceMalformedRequest) as query:
        sf.query("SELECT Health_Band__c FROM Account")
    assert _error(query) == "INVALID_FIELD"
    with pytest.raises(SalesforceMalformedRequest) as write:
        sf.Account.update(acc, {"Health_Band__c": "Red"})
    assert _error(write) == "INVALID_FIELD"

    ps = sf.PermissionSet.create({"Name": "Grants", "Label": "Grants"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as edit_only:
        sf.FieldPermissions.create({"ParentId": ps, "SobjectType": "Account", "Field": "Account.Health_Band__c",
                                    "PermissionsRead": False, "PermissionsEdit": True})
    assert _error(edit_only) == "FIELD_INTEGRITY_EXCEPTION"
    with pytest.raises(SalesforceMalformedRequest) as standard:
        sf.FieldPermissions.create({"ParentId": ps, "SobjectType": "Account", "Field": "Account.Nope__c",
                                    "PermissionsRead": True})
    assert _error(standard) == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    read_only = sf.FieldPermissions.create({"ParentId": ps, "SobjectType": "Account", "Field": "Account.Health_Band__c",
                                            "PermissionsRead": True, "PermissionsEdit": False})["id"]
    assert "Health_Band__c" not in {f["name"] for f in sf.Account.describe()["fields"]}  # not assigned yet
    sf.PermissionSetAssignment.create({"PermissionSetId": ps, "AssigneeId": _me(sf)})
    with pytest.raises(SalesforceMalformedRequest) as again:
        sf.PermissionSetAssignment.create({"PermissionSetId": ps, "AssigneeId": _me(sf)})
    assert _error(again) == "DUPLICATE_VALUE"
    band = next(f for f in sf.Account.describe()["fields"] if f["name"] == "Health_Band__c")
    assert band["updateable"] is False
    with pytest.raises(SalesforceMalformedRequest) as readonly:
        sf.Account.update(acc, {"Health_Band__c": "Red"})
    assert _error(readonly) == "INVALID_FIELD_FOR_INSERT_UPDATE"
    sf.FieldPermissions.update(read_only, {"PermissionsEdit": True})
    assert sf.Account.update(acc, {"Health_Band__c": "Red"}) == 204
    assert sf.query(f"SELECT Health_Band__c FROM Account WHERE Id = '{acc}'")["records"][0]["Health_Band__c"] == "Red"


def test_given_task_custom_fields_then_they_are_created_on_activity():
    with Sandbox(portfolio=tiny_portfolio(3)) as sb:
        sf = sf_client(sb)
        meta = {"type": "Text", "length": 255, "externalId": True, "unique": True, "label": "Key"}
        with pytest.raises(SalesforceMalformedRequest) as on_task:
            sf.restful("tooling/sobjects/CustomField", method="POST", json={"FullName": "Task.Key__c", "Metadata": meta})
        assert _error(on_task) == "FIELD_INTEGRITY_EXCEPTION"
        sf.restful("tooling/sobjects/CustomField", method="POST", json={"FullName": "Activity.Key__c", "Metadata": meta})
        assert "Key__c" in sb.salesforce.fields["Task"]


def test_given_no_permission_to_manage_permission_sets_then_creating_one_is_refused():
    with Sandbox(portfolio=tiny_portfolio(3), salesforce_manage_permissions=False) as sb:
        sf = sf_client(sb)
        with pytest.raises(SalesforceMalformedRequest) as refused:
            sf.PermissionSet.create({"Name": "Mine", "Label": "Mine"})
        assert _error(refused) == "INSUFFICIENT_ACCESS_OR_READONLY"


def test_given_numbers_with_too_many_integer_digits_and_unknown_picklist_values_then_they_are_refused():
    with Sandbox(portfolio=tiny_portfolio(3), precreate_fields=True) as sb:
        sf = sf_client(sb)
        acc = sf.query("SELECT Id FROM Account LIMIT 1")["records"][0]["Id"]
        with pytest.raises(SalesforceMalformedRequest) as score:
            sf.Account.update(acc, {"Health_Score__c": 12345.6})  # Number(5,1): 4 integer digits
        assert _error(score) == "NUMBER_OUTSIDE_VALID_RANGE"
        assert "value outside of valid range on numeric field" in score.value.content[0]["message"]
        assert sf.Account.update(acc, {"Health_Score__c": 9999.94, "Health_Confidence__c": 0.12345}) == 204
        stored = sf.Account.get(acc)
        assert (stored["Health_Score__c"], stored["Health_Confidence__c"]) == (9999.9, 0.123)  # rounded to the scale
        with pytest.raises(SalesforceMalformedRequest) as overflow:
            sf.Account.update(acc, {"Health_Score__c": 9999.96})  # rounds to 10000.0: five integer digits
        assert _error(overflow) == "NUMBER_OUTSIDE_VALID_RANGE"
        with pytest.raises(SalesforceMalformedRequest) as picklist:
            sf.Task.create({"Subject": "x", "WhatId": acc, "Priority": "Urgent"})
        assert _error(picklist) == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
        assert "bad value for restricted picklist field: Urgent" in picklist.value.content[0]["message"]
        priority = next(f for f in sf.Task.describe()["fields"] if f["name"] == "Priority")
        assert priority["restrictedPicklist"] is True


def test_given_the_lock_fault_then_the_records_are_refused_unable_to_lock_row_and_not_written():
    with Sandbox(portfolio=tiny_portfolio(4), precreate_fields=True, faults="salesforce.lock_burst=2") as sb:
        sf = sf_client(sb)
        ids = [r["Id"] for r in sf.query("SELECT Id FROM Account ORDER BY Name")["records"]]
        body = {"allOrNone": False, "records": [{"attributes": {"type": "Account"}, "id": i, "Health_Score__c": 7} for i in ids]}
        reply = sf.restful("composite/sobjects", method="PATCH", json=body)
        assert [r["success"] for r in reply] == [False, False, True, True]
        assert {r["errors"][0]["statusCode"] for r in reply[:2]} == {"UNABLE_TO_LOCK_ROW"}
        assert [sb.record("salesforce", "Account", i)["Health_Score__c"] for i in ids] == [None, None, 7, 7]


def test_given_deletions_then_the_deleted_resource_lists_them_within_its_limits_and_purges_after_15_days():
    with Sandbox(portfolio=tiny_portfolio(5)) as sb:
        sf = sf_client(sb)
        ids = [r["Id"] for r in sf.query("SELECT Id FROM Account ORDER BY Name")["records"]]
        sf.Account.delete(ids[0])
        sb.advance_clock(120)
        now = sb.clock.now()
        listed = sf.Account.deleted(now - timedelta(hours=1), now)
        assert [r["id"] for r in listed["deletedRecords"]] == [ids[0]]
        assert set(listed) == {"deletedRecords", "earliestDateAvailable", "latestDateCovered"}
        with pytest.raises(SalesforceMalformedRequest) as short:
            sf.Account.deleted(now - timedelta(seconds=30), now)
        assert _error(short) == "INVALID_REPLICATION_DATE"
        with pytest.raises(SalesforceMalformedRequest) as old:
            sf.Account.deleted(now - timedelta(days=31), now)
        assert _error(old) == "INVALID_REPLICATION_DATE"

        sb.advance_clock(16 * 86400)  # the Recycle Bin keeps deletions 15 days
        now = sb.clock.now()
        assert sf.query_all("SELECT Id FROM Account WHERE IsDeleted = true", include_deleted=True)["records"] == []
        with pytest.raises(SalesforceMalformedRequest) as purged:
            sf.Account.deleted(now - timedelta(days=17), now)
        assert _error(purged) == "INVALID_REPLICATION_DATE"
        recent = sf.Account.deleted(now - timedelta(days=1), now)
        assert recent["deletedRecords"] == [] and recent["earliestDateAvailable"] > listed["earliestDateAvailable"]


def test_given_a_closed_bulk_job_then_it_reports_upload_complete_and_in_progress_for_n_polls():
    with Sandbox(portfolio=tiny_portfolio(3), precreate_fields=True, bulk_polls_in_progress=3) as sb:
        sf = sf_client(sb)
        ids = [r["Id"] for r in sf.query("SELECT Id FROM Account")["records"]]
        client = sf.bulk2.Account._client
        job = client.create_job("update")["id"]
        client.upload_job_data(job, "Id,Health_Score__c\n" + "".join(f"{i},12.5\n" for i in ids))
        client.close_job(job)
        seq = sb.requests()["last_seq"]
        states = [client.get_job(job, False)["state"] for _ in range(4)]
        assert states == ["UploadComplete", "InProgress", "InProgress", "JobComplete"]
        assert sb.requests(since=seq)["counts"]["salesforce"] == {"GET jobs/ingest/{id}": 4}  # every poll is a call
        assert sb.salesforce.used >= 4
        assert all(sb.record("salesforce", "Account", i)["Health_Score__c"] == 12.5 for i in ids)


def test_given_a_write_then_last_modified_by_names_the_writer_and_the_date_header_follows_the_emulator_clock():
    with Sandbox(portfolio=tiny_portfolio(2), precreate_fields=True) as sb:
        sf = sf_client(sb)
        ids = [r["Id"] for r in sf.query("SELECT Id FROM Account ORDER BY Name")["records"]]
        me = _me(sf)
        sf.Account.update(ids[0], {"Health_Score__c": 50})
        sb.modify("salesforce", "Account", ids[1], {"ARR__c": 5.0})  # a person, through the inspection endpoint
        ours = sf.query(f"SELECT Id FROM Account WHERE LastModifiedById = '{me}'")["records"]
        theirs = sf.query(f"SELECT Id FROM Account WHERE LastModifiedById != '{me}'")["records"]
        assert [r["Id"] for r in ours] == [ids[0]] and ids[1] in [r["Id"] for r in theirs]
        sb.advance_clock(3 * 86400)
        answer = sf.session.get(f"https://{sf.sf_instance}/services/data/v59.0/limits/",
                                headers={"Authorization": "Bearer " + sf.session_id})
        from email.utils import parsedate_to_datetime

        assert abs(parsedate_to_datetime(answer.headers["Date"]) - sb.clock.now()) < timedelta(seconds=5)
        assert parsedate_to_datetime(answer.headers["Date"]) > datetime.now(timezone.utc) + timedelta(days=2)
