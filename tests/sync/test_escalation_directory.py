"""Who the ladder reaches: owners frame first (merged across CRMs), settings second; and SLA due dates."""

from datetime import datetime, timezone

import pandas as pd

from healthsync.sync.escalation import Directory, effective_due

OWNERS = pd.DataFrame(
    {
        # the same CSM from HubSpot (no manager) and from Salesforce (with one), in that order
        "email": ["Csm@Example.com", "csm@example.com", "mgr@example.com", "chief@example.com"],
        "name": [None, "Casey", "Morgan", "Vic"],
        "role": [None, "csm", "manager", "VP Customer Success"],
        "manager_email": [None, "mgr@example.com", "chief@example.com", None],
    }
)


def test_manager_and_vp_come_from_the_owners_chain_merged_across_crms():
    d = Directory(OWNERS, contacts={}, vp=None)
    assert d.manager_of("CSM@example.com") == "mgr@example.com"
    assert d.vp_for("csm@example.com") == "chief@example.com"  # "VP Customer Success" is a VP title
    assert d.name_of("csm@example.com") == "Casey"


def test_settings_contacts_and_vp_fill_in_when_the_crm_has_no_managers():
    d = Directory(pd.DataFrame({"email": ["a@example.com"]}), contacts={"a@example.com": "boss@example.com", "*": "cs-lead@example.com"}, vp="vp@example.com")
    assert d.manager_of("a@example.com") == "boss@example.com"
    assert d.manager_of("someone.else@example.com") == "cs-lead@example.com"
    assert d.vp_for("a@example.com") == "vp@example.com"
    assert Directory(None, contacts={}, vp=None).manager_of("a@example.com") is None


def test_a_manager_loop_does_not_hang():
    loop = pd.DataFrame({"email": ["a@x.com", "b@x.com"], "role": ["csm", "manager"], "manager_email": ["b@x.com", "a@x.com"]})
    assert Directory(loop, contacts={}, vp=None).vp_for("a@x.com") is None


def test_salesforce_date_only_due_dates():
    stored = datetime(2026, 11, 26, 6, 30, tzinfo=timezone.utc)
    same_day = datetime(2026, 11, 26, tzinfo=timezone.utc)
    assert effective_due(stored, same_day) == stored  # unchanged: keep the exact time we set
    assert effective_due(stored, datetime(2026, 11, 29, tzinfo=timezone.utc)) == datetime(2026, 11, 30, tzinfo=timezone.utc)
    assert effective_due(stored, datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)) == datetime(2026, 11, 28, 9, 0, tzinfo=timezone.utc)
    assert effective_due(stored, None) == stored
