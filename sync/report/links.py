"""Links from the report to each record's page in its CRM.

Built from what each CRM said about itself (sync/crm_directory.py, table
`crm_instances`), never from configuration guesses:

- Salesforce: the instance's Lightning URL, `https://<instance>/lightning/r/<Object>/<Id>/view`
  (Account, Opportunity, Task);
- HubSpot: the portal's record URL, `https://<uiDomain>/contacts/<portalId>/record/<objectTypeId>/<id>`
  with the object type ids of crm-api-notes §2.2 (companies 0-2, deals 0-3, tasks 0-27).

A template holds `{id}` where the CRM's own record id goes (the canonical id without
its `sf:`/`hs:` prefix). A CRM never asked (file-only sources, a failed look-up) has
no templates, and its records show without a link.
"""

from __future__ import annotations

from urllib.parse import quote

#: the report's record kinds -> Salesforce sObject names
SALESFORCE_OBJECTS = {"account": "Account", "opportunity": "Opportunity", "task": "Task"}
#: the report's record kinds -> HubSpot object type ids
HUBSPOT_OBJECT_TYPES = {"account": "0-2", "opportunity": "0-3", "task": "0-27"}
KINDS = tuple(SALESFORCE_OBJECTS)


def link_templates(instances: dict[str, dict]) -> dict[str, dict[str, str]]:
    """crm -> record kind -> URL template with `{id}`; only CRMs whose address is known."""
    out: dict[str, dict[str, str]] = {}
    sf = instances.get("salesforce") or {}
    if sf.get("instance_url"):
        base = str(sf["instance_url"]).rstrip("/")
        out["salesforce"] = {kind: f"{base}/lightning/r/{obj}/{{id}}/view" for kind, obj in SALESFORCE_OBJECTS.items()}
    hs = instances.get("hubspot") or {}
    if hs.get("portal_id") is not None:
        domain = str(hs.get("ui_domain") or "app.hubspot.com").strip("/")
        portal = int(hs["portal_id"])
        out["hubspot"] = {kind: f"https://{domain}/contacts/{portal}/record/{type_id}/{{id}}"
                          for kind, type_id in HUBSPOT_OBJECT_TYPES.items()}
    return out


def crm_record_id(record_id: str) -> str:
    """The CRM's own id of a canonical id (`sf:001...` -> `001...`; a bare id stays as it is)."""
    text = str(record_id)
    prefix, sep, rest = text.partition(":")
    return rest if sep and prefix in ("sf", "hs") else text


def record_url(templates: dict[str, dict[str, str]], crm: str, kind: str, record_id: str | None) -> str | None:
    """The record's page in its CRM, or None when the CRM's address or the id is unknown."""
    template = (templates.get(crm) or {}).get(kind)
    if not template or not record_id:
        return None
    return template.replace("{id}", quote(crm_record_id(record_id), safe=""))
