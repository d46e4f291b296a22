"""Field definitions of the emulated CRMs, derived from the `mapping:` section of config/default.yaml.

The customer's own fields that healthsync READS (Segment__c, ARR__c ... and the HubSpot
equivalents) exist from the start, as they would in a customer's org. The fields
healthsync WRITES (the `write:` sections and the task key fields) do not: they appear
only once created through the Tooling API / properties API (what `healthsync crm setup`
does) or when the sandbox is started with `precreate_fields=True`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from healthsync import config
from healthsync.config.canonical import ACCOUNTS, OPPORTUNITIES, TICKETS


@lru_cache(maxsize=1)
def mapping() -> dict:
    """The `mapping:` section of the shipped default configuration."""
    with open(Path(config.__file__).parent / "default.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)["mapping"]


@dataclass
class SfField:
    name: str
    type: str  # id string textarea picklist reference date datetime boolean double currency percent int email url combobox
    label: str = ""
    custom: bool = False
    createable: bool = True
    updateable: bool = True
    nillable: bool = True
    external_id: bool = False
    unique: bool = False
    length: int = 0
    reference_to: list[str] = field(default_factory=list)
    relationship_name: str | None = None
    picklist: list[str] = field(default_factory=list)
    restricted: bool = False  # restricted picklist: values outside `picklist` are refused
    precision: int = 0  # numbers: total digits (0 = unchecked, the standard fields)
    scale: int = 0  # numbers: digits right of the decimal point
    needs_grant: bool = False  # created through the Tooling API: invisible until field-level security is granted

    @property
    def display_label(self) -> str:
        return self.label or self.name.replace("__c", "").replace("_", " ")

    def describe(self, createable: bool | None = None, updateable: bool | None = None) -> dict:
        return {
            "name": self.name,
            "label": self.display_label,
            "type": self.type,
            "length": self.length,
            "precision": self.precision,
            "scale": self.scale,
            "digits": 0,
            "nillable": self.nillable,
            "createable": self.createable if createable is None else createable,
            "updateable": self.updateable if updateable is None else updateable,
            "custom": self.custom,
            "externalId": self.external_id,
            "unique": self.unique,
            "idLookup": self.name == "Id" or self.external_id,
            "filterable": True,
            "sortable": self.type != "textarea",
            "picklistValues": [{"value": v, "label": v, "active": True, "defaultValue": False} for v in self.picklist],
            "restrictedPicklist": self.restricted,
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship_name,
            "soapType": _SOAP.get(self.type, "xsd:string"),
        }


_SOAP = {"id": "tns:ID", "reference": "tns:ID", "boolean": "xsd:boolean", "double": "xsd:double",
         "currency": "xsd:double", "percent": "xsd:double", "int": "xsd:int", "date": "xsd:date",
         "datetime": "xsd:dateTime"}

_KIND_TO_SF = {"str": "string", "float": "double", "int": "double", "enum": "picklist", "date": "date",
               "datetime": "datetime", "bool": "boolean"}

SF_PREFIX = {"Account": "001", "Opportunity": "006", "Case": "500", "Task": "00T", "User": "005",
             "PermissionSet": "0PS", "FieldPermissions": "01k", "PermissionSetAssignment": "0Pa"}
SF_OBJECTS = tuple(SF_PREFIX)
#: the access-control objects `crm setup` writes to grant field-level security (FLS)
SF_SETUP_OBJECTS = ("PermissionSet", "FieldPermissions", "PermissionSetAssignment")


def _ro(name: str, type_: str, **kw) -> SfField:
    return SfField(name, type_, createable=False, updateable=False, **kw)


def _common() -> list[SfField]:
    return [
        _ro("Id", "id", nillable=False, length=18),
        _ro("IsDeleted", "boolean", nillable=False),
        _ro("CreatedDate", "datetime", nillable=False),
        _ro("LastModifiedDate", "datetime", nillable=False),
        _ro("SystemModstamp", "datetime", nillable=False),
        _ro("CreatedById", "reference", reference_to=["User"], relationship_name="CreatedBy", length=18),
        _ro("LastModifiedById", "reference", reference_to=["User"], relationship_name="LastModifiedBy", length=18),
    ]


def _owner() -> SfField:
    return SfField("OwnerId", "reference", reference_to=["User"], relationship_name="Owner", length=18)


def salesforce_fields() -> dict[str, dict[str, SfField]]:
    """Standard fields plus the customer's custom fields that the mapping reads."""
    m = mapping()["salesforce"]
    objs: dict[str, list[SfField]] = {
        "Account": [
            SfField("Name", "string", nillable=False, length=255),
            _owner(),
            SfField("Website", "url", length=255),
            SfField("Industry", "picklist", length=255),
            SfField("Type", "picklist", length=255),
            SfField("Description", "textarea", length=32000),
            SfField("AnnualRevenue", "currency"),
            SfField("NumberOfEmployees", "int"),
        ],
        "Opportunity": [
            SfField("Name", "string", nillable=False, length=120),
            SfField("AccountId", "reference", reference_to=["Account"], relationship_name="Account", length=18),
            SfField("StageName", "picklist", nillable=False, length=255),
            SfField("Amount", "currency"),
            SfField("Probability", "percent"),
            SfField("CloseDate", "date", nillable=False),
            SfField("Type", "picklist", length=255, picklist=["New Business", "Existing Business", "Renewal"],
                    restricted=True),
            SfField("ForecastCategoryName", "picklist", length=255),
            _ro("IsClosed", "boolean"),
            _ro("IsWon", "boolean"),
            _owner(),
            SfField("Description", "textarea", length=32000),
        ],
        "Case": [
            SfField("AccountId", "reference", reference_to=["Account"], relationship_name="Account", length=18),
            SfField("Subject", "string", length=255),
            SfField("Priority", "picklist", length=40, picklist=["Critical", "High", "Medium", "Low"], restricted=True),
            SfField("Status", "picklist", length=40, picklist=["New", "Working", "Escalated", "On Hold", "Closed"],
                    restricted=True),
            SfField("Origin", "picklist", length=40),
            _ro("ClosedDate", "datetime"),
            _ro("IsClosed", "boolean"),
            SfField("IsEscalated", "boolean"),
            _owner(),
            SfField("Description", "textarea", length=32000),
        ],
        "Task": [
            SfField("Subject", "combobox", length=255),
            SfField("WhatId", "reference", reference_to=["Account", "Opportunity", "Case"], relationship_name="What", length=18),
            SfField("WhoId", "reference", reference_to=["Contact", "Lead"], relationship_name="Who", length=18),
            _owner(),
            SfField("ActivityDate", "date"),
            SfField("Status", "picklist", nillable=False, length=40, restricted=True,
                    picklist=["Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred"]),
            SfField("Priority", "picklist", nillable=False, length=40, picklist=["High", "Normal", "Low"],
                    restricted=True),
            SfField("Description", "textarea", length=32000),
            _ro("IsClosed", "boolean"),
            _ro("AccountId", "reference", reference_to=["Account"], relationship_name="Account", length=18),
        ],
        "User": [
            _ro("Username", "string", length=80),
            _ro("Email", "email", length=128),
            _ro("Name", "string", length=121),
            _ro("FirstName", "string", length=40),
            _ro("LastName", "string", length=80),
            _ro("Title", "string", length=80),
            _ro("IsActive", "boolean"),
            _ro("ManagerId", "reference", reference_to=["User"], relationship_name="Manager", length=18),
        ],
        # access control (what `crm setup` writes; API 24.0+, sforce_api_objects_fieldpermissions)
        "PermissionSet": [
            SfField("Name", "string", nillable=False, length=80),
            SfField("Label", "string", nillable=False, length=80),
            SfField("Description", "textarea", length=255),
            _ro("IsOwnedByProfile", "boolean"),
        ],
        "FieldPermissions": [
            SfField("ParentId", "reference", nillable=False, reference_to=["PermissionSet"], relationship_name="Parent",
                    length=18, updateable=False),
            SfField("SobjectType", "string", nillable=False, length=40, updateable=False),
            SfField("Field", "string", nillable=False, length=120, updateable=False),
            SfField("PermissionsRead", "boolean"),
            SfField("PermissionsEdit", "boolean"),
        ],
        "PermissionSetAssignment": [
            SfField("PermissionSetId", "reference", nillable=False, reference_to=["PermissionSet"],
                    relationship_name="PermissionSet", length=18, updateable=False),
            SfField("AssigneeId", "reference", nillable=False, reference_to=["User"], relationship_name="Assignee",
                    length=18, updateable=False),
        ],
    }
    specs = {"account": ACCOUNTS, "opportunity": OPPORTUNITIES, "ticket": TICKETS}
    for entity, spec in specs.items():
        obj = m[entity]["object"]
        known = {f.name for f in objs[obj]} | {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp"}
        for column, sf_name in m[entity]["read"].items():
            if sf_name in known or "." in sf_name:
                continue
            col = spec.column(column)
            kind = col.kind
            choices = list(col.choices or []) if kind == "enum" else []
            # the customer's own picklists: values listed, not restricted (an org may spell them its own way)
            objs[obj].append(SfField(sf_name, _KIND_TO_SF[kind], custom=sf_name.endswith("__c"),
                                     length=255 if kind in ("str", "enum") else 0, picklist=choices))
            known.add(sf_name)
    out: dict[str, dict[str, SfField]] = {}
    for obj, fs in objs.items():
        out[obj] = {f.name: f for f in _common() + fs}
    return out


# Tooling API CustomField Metadata.type -> describe type
TOOLING_TYPES = {"Number": "double", "Percent": "percent", "Currency": "currency", "Text": "string",
                 "TextArea": "textarea", "LongTextArea": "textarea", "Html": "textarea", "Date": "date",
                 "DateTime": "datetime", "Checkbox": "boolean", "Picklist": "picklist", "Email": "email",
                 "Url": "url", "Phone": "string"}

def salesforce_healthsync_fields() -> list[tuple[str, str, dict]]:
    """[(object, field, Tooling Metadata)] for every field healthsync writes.

    The one definition shared with `healthsync crm setup` (connectors/salesforce_fields.py),
    so the sandbox never holds a field of another type than a real org gets.
    """
    from healthsync.connectors.salesforce_fields import healthsync_fields

    return [(f.sobject, f.name, dict(f.metadata)) for f in healthsync_fields(mapping()["salesforce"])]


def sf_field_from_metadata(name: str, meta: dict) -> SfField:
    type_ = TOOLING_TYPES.get(str(meta.get("type", "")))
    if type_ is None:
        raise ValueError(f"unsupported Metadata.type {meta.get('type')!r} (supported: {', '.join(TOOLING_TYPES)})")
    values = [v.get("fullName") or v.get("label") for v in
              ((meta.get("valueSet") or {}).get("valueSetDefinition") or {}).get("value", [])]
    precision, scale = int(meta.get("precision") or 0), int(meta.get("scale") or 0)
    if type_ in ("double", "percent", "currency"):
        if not 1 <= precision <= 18 or not 0 <= scale <= precision:
            raise ValueError(f"{name}: precision must be 1-18 and scale 0-precision (got {precision}, {scale})")
    length = int(meta.get("length") or 0)
    if meta.get("type") == "Text" and not 1 <= length <= 255:
        raise ValueError(f"{name}: Text length must be 1-255 (got {length})")
    restricted = bool((meta.get("valueSet") or {}).get("restricted"))
    return SfField(name, type_, label=meta.get("label") or "", custom=True, external_id=bool(meta.get("externalId")),
                   unique=bool(meta.get("unique")), length=length, picklist=values, restricted=restricted,
                   precision=precision, scale=scale, needs_grant=True)


# --- HubSpot -------------------------------------------------------------------------------

@dataclass
class HsProperty:
    name: str
    type: str  # string number date datetime enumeration bool
    field_type: str = "text"
    label: str = ""
    group: str = "companyinformation"
    hubspot_defined: bool = True
    unique: bool = False
    read_only: bool = False
    options: list[dict] = field(default_factory=list)
    description: str = ""
    created_at: str = "2020-01-01T00:00:00.000Z"

    def as_json(self) -> dict:
        return {
            "name": self.name, "label": self.label or self.name, "type": self.type, "fieldType": self.field_type,
            "groupName": self.group, "description": self.description, "options": self.options,
            "displayOrder": -1, "calculated": False, "externalOptions": False, "hasUniqueValue": self.unique,
            "hidden": False, "hubspotDefined": self.hubspot_defined, "formField": False,
            "createdAt": self.created_at, "updatedAt": self.created_at, "archived": False,
            "modificationMetadata": {"archivable": not self.hubspot_defined, "readOnlyDefinition": self.hubspot_defined,
                                     "readOnlyValue": self.read_only},
        }


_KIND_TO_HS = {"str": ("string", "text"), "float": ("number", "number"), "int": ("number", "number"),
               "enum": ("enumeration", "select"), "date": ("date", "date"), "datetime": ("datetime", "date"),
               "bool": ("bool", "booleancheckbox")}

HS_OBJECTS = ("companies", "deals", "tickets", "tasks")
HS_TYPE_IDS = {"contacts": "0-1", "companies": "0-2", "deals": "0-3", "tickets": "0-5", "tasks": "0-27"}
HS_GROUP = {"companies": "companyinformation", "deals": "dealinformation", "tickets": "ticketinformation",
            "tasks": "task"}

# default properties returned when a request names none (crm-api-notes 2.2; search guide)
HS_DEFAULT_PROPERTIES = {
    "companies": ["createdate", "domain", "hs_lastmodifieddate", "hs_object_id", "name"],
    "deals": ["amount", "closedate", "createdate", "dealname", "dealstage", "hs_lastmodifieddate", "hs_object_id",
              "pipeline"],
    "tickets": ["content", "createdate", "hs_lastmodifieddate", "hs_object_id", "hs_pipeline", "hs_pipeline_stage",
                "hs_ticket_category", "hs_ticket_priority", "subject"],
    "tasks": ["hs_createdate", "hs_lastmodifieddate", "hs_object_id"],
}


def _p(name, type_, field_type=None, **kw) -> HsProperty:
    return HsProperty(name, type_, field_type or {"number": "number", "bool": "booleancheckbox",
                                                   "enumeration": "select", "date": "date",
                                                   "datetime": "date"}.get(type_, "text"), **kw)


def hubspot_properties() -> dict[str, dict[str, HsProperty]]:
    common = [_p("hs_object_id", "number", read_only=True), _p("createdate", "datetime", read_only=True),
              _p("hs_lastmodifieddate", "datetime", read_only=True), _p("hubspot_owner_id", "enumeration")]
    objs = {
        "companies": [_p("name", "string"), _p("domain", "string"), _p("industry", "string"),
                      _p("annualrevenue", "number"), _p("numberofemployees", "number")],
        "deals": [_p("dealname", "string"), _p("dealstage", "enumeration"), _p("pipeline", "enumeration"),
                  _p("amount", "number"), _p("closedate", "datetime"), _p("dealtype", "enumeration"),
                  _p("hs_deal_stage_probability", "number"), _p("hs_forecast_category", "enumeration"),
                  _p("hs_is_closed", "bool"), _p("hs_is_closed_won", "bool")],
        "tickets": [_p("subject", "string"), _p("content", "string", "textarea"), _p("hs_pipeline", "enumeration"),
                    _p("hs_pipeline_stage", "enumeration"), _p("hs_ticket_priority", "enumeration"),
                    _p("hs_ticket_category", "enumeration"), _p("closed_date", "datetime")],
        "tasks": [_p("hs_timestamp", "datetime"), _p("hs_task_subject", "string"),
                  _p("hs_task_body", "string", "textarea"), _p("hs_task_status", "enumeration"),
                  _p("hs_task_priority", "enumeration"), _p("hs_task_type", "enumeration"),
                  _p("hs_task_completion_date", "datetime"), _p("hs_createdate", "datetime", read_only=True)],
    }
    m = mapping()["hubspot"]
    specs = {"account": ACCOUNTS, "opportunity": OPPORTUNITIES, "ticket": TICKETS}
    out: dict[str, dict[str, HsProperty]] = {}
    for obj, props in objs.items():
        out[obj] = {}
        for p in common + props:
            p.group = HS_GROUP[obj]
            out[obj][p.name] = p
    for entity, spec in specs.items():
        obj = m[entity]["object"]
        for column, prop in m[entity]["read"].items():
            if prop in out[obj] or "." in prop:
                continue
            type_, field_type = _KIND_TO_HS[spec.column(column).kind]
            if type_ == "enumeration":  # customer-defined enumerations: options from the canonical choices
                opts = [{"label": c, "value": c, "displayOrder": i, "hidden": False}
                        for i, c in enumerate(spec.column(column).choices)]
            else:
                opts = []
            out[obj][prop] = HsProperty(prop, type_, field_type, group=HS_GROUP[obj], hubspot_defined=False,
                                        options=opts)
    ident = m.get("identity", {}).get("hubspot_salesforce_id_property")
    if ident and ident not in out["companies"]:
        out["companies"][ident] = HsProperty(ident, "string", "text", group="companyinformation",
                                             hubspot_defined=False)
    return out


_HS_WRITE_TYPES = {"score": "number", "confidence": "number", "updated": "datetime",
                   "adjusted_probability": "number", "expected_arr": "number"}


def hubspot_healthsync_properties() -> list[tuple[str, HsProperty]]:
    """[(object, property)] for every property healthsync writes (what precreate_fields=True creates)."""
    m = mapping()["hubspot"]
    out = []
    for entity in ("account", "opportunity"):
        obj = m[entity]["object"]
        for column, prop in m[entity].get("write", {}).items():
            type_ = _HS_WRITE_TYPES.get(column, "string")
            ft = {"number": "number", "datetime": "date"}.get(type_, "textarea" if column == "drivers" else "text")
            out.append((obj, HsProperty(prop, type_, ft, label=prop.replace("_", " ").title(), group="healthsync",
                                        hubspot_defined=False)))
    key = m["task"]["key_field"]
    out.append((m["task"]["object"], HsProperty(key, "string", "text", label="Healthsync key", group="healthsync",
                                                hubspot_defined=False)))  # tasks cannot have unique properties
    return out
