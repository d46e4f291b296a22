"""Where each CRM lives and who its owners are, as the connectors read them for the report's links and names.

HubSpot: `GET /account-info/v3/details` (portal id, UI domain), through the emulator with a real
HTTP request; Salesforce: the instance URL of the login. Owners carry names from both CRMs.
"""

from __future__ import annotations

import requests

from healthsync.connectors.hubspot import hubspot_from_ready
from healthsync.connectors.salesforce import salesforce_from_ready
from healthsync.connectors.sandbox.hubspot import PORTAL_ID
from healthsync.sync.crm_directory import refresh_directory
from healthsync.sync.report.links import link_templates, record_url
from healthsync.sync.state import open_store
from tests.connectors.conftest import FAST, MAPPING


def test_given_the_hubspot_emulator_when_account_details_are_read_then_every_required_field_is_there(small_sandbox):
    hs = small_sandbox.ready["hubspot"]
    reply = requests.get(f"{hs['host']}/account-info/v3/details", headers={"Authorization": f"Bearer {hs['access_token']}"}, timeout=10)
    assert reply.status_code == 200
    body = reply.json()
    assert {"portalId", "accountType", "timeZone", "companyCurrency", "additionalCurrencies", "utcOffset",
            "utcOffsetMilliseconds", "uiDomain", "dataHostingLocation"} <= set(body)
    assert body["portalId"] == PORTAL_ID and body["uiDomain"] == "app.hubspot.com"
    # as strict as HubSpot: no token, no answer
    assert requests.get(f"{hs['host']}/account-info/v3/details", timeout=10).status_code == 401


def test_given_both_connectors_then_instance_info_gives_record_urls_of_the_right_shape(small_sandbox):
    hubspot = hubspot_from_ready(small_sandbox.ready, MAPPING["hubspot"], retry=FAST)
    salesforce = salesforce_from_ready(small_sandbox.ready, MAPPING["salesforce"], retry=FAST)
    hs_info, sf_info = hubspot.instance_info(), salesforce.instance_info()
    assert hs_info == {"portal_id": PORTAL_ID, "ui_domain": "app.hubspot.com"}
    assert sf_info == {"instance_url": small_sandbox.ready["salesforce"]["instance_url"]}
    calls = hubspot.stats.calls
    hubspot.instance_info()
    assert hubspot.stats.calls == calls  # read once per connector
    templates = link_templates({"hubspot": hs_info, "salesforce": sf_info})
    assert record_url(templates, "hubspot", "account", "hs:4000000001") == f"https://app.hubspot.com/contacts/{PORTAL_ID}/record/0-2/4000000001"
    assert record_url(templates, "hubspot", "task", "6000000001") == f"https://app.hubspot.com/contacts/{PORTAL_ID}/record/0-27/6000000001"
    assert record_url(templates, "salesforce", "opportunity", "sf:006Hs0000000021IAA") == \
        f"{sf_info['instance_url']}/lightning/r/Opportunity/006Hs0000000021IAA/view"
    assert record_url({}, "salesforce", "account", "sf:001") is None  # an instance never read: no link


def test_given_a_refresh_then_owners_with_names_and_instances_are_stored(small_sandbox, tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    for connector in (hubspot_from_ready(small_sandbox.ready, MAPPING["hubspot"], retry=FAST),
                      salesforce_from_ready(small_sandbox.ready, MAPPING["salesforce"], retry=FAST)):
        assert refresh_directory(store, connector, now) == []
    for crm in ("hubspot", "salesforce"):
        owners = [o for o in store.load_replica(crm, "owners") if o["email"] != "integration@healthsync.sandbox"]
        assert owners and all(o["name"] and " " in o["name"] for o in owners), owners
    assert set(store.crm_instance_info()) == {"hubspot", "salesforce"}
