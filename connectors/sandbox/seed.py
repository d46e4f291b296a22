"""Seed the emulated CRMs and Slack from canonical frames (the demo generator's output or fixtures).

Canonical columns are mapped to CRM fields through the `mapping:` section of
config/default.yaml (the inverse of each `read:` entry) and enum values through
connectors/crm_values.py, so the connectors reading the sandbox back get exactly the
canonical values that went in. Each CRM issues its own ids; the canonical ids of the
input frames are only used to link opportunities and tickets to their account.
Salesforce Opportunity.Probability is a percent (0-100); HubSpot hs_deal_stage_probability is 0-1.

Modification times are spread over the year before the emulator clock's now (no seeded record
is newer than an hour), as in a real org or portal where most records were last touched weeks or
months ago (`spread_stamps`). `same_stamp=N` gives the first N companies, deals and tickets of
HubSpot ONE modification time, half an hour ago and newer than every other seeded stamp, as
HubSpot's own imports and workflows leave them (BEHAVIOR.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from healthsync.config.canonical import ACCOUNTS, OPPORTUNITIES, TICKETS
from healthsync.connectors import crm_values
from healthsync.connectors.sandbox.clock import hs_datetime, sf_datetime
from healthsync.connectors.sandbox.schema import mapping

_REF_COLUMNS = {"account_id", "opportunity_id", "ticket_id", "owner_email"}


def _py(values: pd.Series, kind: str, style: str) -> list[Any]:
    """A canonical column -> Python values for one CRM (style "sf" typed, "hs" strings); missing -> None.

    Vectorised: this runs over millions of cells when the sandbox starts with 100,000 accounts.
    """
    if kind in ("date", "datetime"):
        ts = pd.to_datetime(values, errors="coerce", utc=True).dt.tz_localize(None)
        raw = ts.to_numpy(dtype="datetime64[ms]")
        text = np.datetime_as_string(raw, unit="D" if kind == "date" else "ms").astype(object)
        if kind == "datetime":
            text = text + ("+0000" if style == "sf" else "Z")
        text[np.isnat(raw)] = None
        return text.tolist()
    if kind in ("float", "int"):
        num = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
        missing = np.isnan(num)
        whole = np.where(missing, 0.0, num)
        if style == "hs":  # HubSpot number strings: "12" for whole numbers, shortest repr otherwise
            return [None if m else (str(int(v)) if v.is_integer() else repr(v))
                    for v, m in zip(whole.tolist(), missing.tolist())]
        out = whole.astype(np.int64).astype(object) if kind == "int" else num.astype(object)
        out[missing] = None
        return out.tolist()
    if kind == "str" and not isinstance(values.dtype, pd.CategoricalDtype):
        out = values.to_numpy(dtype=object, na_value=None)
        if values.dtype == object:  # plain object columns may hold non-strings
            return [v if v is None or isinstance(v, str) else str(v) for v in out.tolist()]
        return out.tolist()
    if kind == "bool" and isinstance(values.dtype, pd.BooleanDtype):
        out = values.to_numpy(dtype=object, na_value=None).tolist()
        if style == "sf":
            return out
        spell = {True: "true", False: "false", None: None}
        return [spell[v] for v in out]
    present = values.notna().to_numpy()
    if kind == "bool":
        truth = values.astype(object).astype(str).str.strip().str.lower().isin(["true", "1", "yes", "t", "y"]).to_numpy()
        out = truth.astype(object) if style == "sf" else np.where(truth, "true", "false").astype(object)
        out[~present] = None
        return out.tolist()
    out = values.astype(str).to_numpy(dtype=object)
    out[~present] = None
    return out.tolist()


def _columns(frame: pd.DataFrame, spec, read_map: dict, style: str, enums: dict[str, tuple[dict, str]]) -> dict[str, list]:
    """CRM field -> list of values for every mapped, non-reference canonical column present in `frame`."""
    out = {}
    for column, crm_field in read_map.items():
        if column in _REF_COLUMNS or column not in frame.columns or "." in crm_field:
            continue
        kind = spec.column(column).kind
        values = frame[column]
        if column in enums:  # canonical enum -> the CRM's spelling (unknown values pass through unchanged)
            table, key = enums[column]
            get = table[key].get
            out[crm_field] = [None if v is None else get(v, v)
                              for v in _py(values, "str", style)]
            continue
        out[crm_field] = _py(values, kind, style)
    return out


def _split_name(name: str, email: str) -> tuple[str, str]:
    name = (name or email.split("@")[0]).strip()
    first, _, last = name.partition(" ")
    return first, last or first


def _emails(frame: pd.DataFrame) -> list:
    """Lower-cased owner emails (None when blank), vectorised."""
    if "owner_email" not in frame.columns:
        return [None] * len(frame)
    lowered = frame["owner_email"].astype("string").str.strip().str.lower()
    return lowered.where(lowered != "", pd.NA).to_numpy(dtype=object, na_value=None).tolist()


def _resolve_owners(emails: list, ids: dict[str, str], make, default) -> list:
    """Owner email -> CRM user/owner id; unknown emails get a user made for them, blanks the default."""
    for e in set(emails):
        if e is not None and e not in ids:
            ids[e] = make(e)
    get = ids.get
    return [default if e is None else get(e) for e in emails]


def _account_refs(frame: pd.DataFrame, ids: dict[str, str]) -> list:
    get = ids.get
    return [get(a) for a in frame["account_id"].astype(str).tolist()]


def _subjects(frame: pd.DataFrame) -> list[str]:
    return ["Support ticket " + t for t in frame["ticket_id"].astype(str).tolist()]


#: seeded modification times fall within this many days before the emulator's now ...
STAMP_HORIZON_DAYS = 365
#: ... and are at least this old, so nothing seeded is still waiting for the search index
STAMP_NEWEST = timedelta(hours=1)
#: the shared instant of `same_stamp`: newer than every spread stamp
SAME_STAMP_AGE = timedelta(minutes=30)


def spread_stamps(rng: np.random.Generator, n: int, now: datetime, created: list | None = None,
                  style: str = "hs") -> tuple[list[str], list[str]]:
    """(modification times, creation times) for `n` seeded records, as CRM datetime strings.

    A record created at `created` (CRM datetime text; None or absent: a random day of the
    horizon) was last modified at a random time between its creation and an hour ago,
    skewed towards recent. A creation time newer than that keeps its own time as stamp.
    """
    latest = np.datetime64(now.replace(tzinfo=None) - STAMP_NEWEST, "ms")
    start = latest - np.timedelta64(STAMP_HORIZON_DAYS * 86_400_000, "ms")
    span = (latest - start).astype("int64")
    born = start + (rng.random(n) * span).astype("int64").astype("timedelta64[ms]")
    if created is not None:
        given = pd.to_datetime(pd.Series(created, dtype=object), errors="coerce", utc=True).dt.tz_localize(None)
        given = given.to_numpy(dtype="datetime64[ms]")
        born = np.where(np.isnat(given), born, given)
    lo = np.minimum(born, latest)
    stamps = lo + ((latest - lo).astype("int64") * np.sqrt(rng.random(n))).astype("int64").astype("timedelta64[ms]")
    stamps = np.maximum(stamps, born)
    suffix = "Z" if style == "hs" else "+0000"
    return ([t + suffix for t in np.datetime_as_string(stamps, unit="ms").tolist()],
            [t + suffix for t in np.datetime_as_string(born, unit="ms").tolist()])


def _restamp_salesforce(api, obj: str, ids: list[str], stamps: list[str], created: list[str] | None) -> None:
    """Give seeded Salesforce records their own modification (and creation) times."""
    records = api.records[obj]
    for i, rid in enumerate(ids):
        rec = records[rid]
        rec["LastModifiedDate"] = rec["SystemModstamp"] = stamps[i]
        if created is not None:
            rec["CreatedDate"] = created[i]


def _stamps_for(rng, n: int, now: datetime, created: list | None, same_stamp: int, shared: str,
                style: str = "hs") -> tuple[list[str], list[str]]:
    stamps, born = spread_stamps(rng, n, now, created, style)
    stamps[: min(same_stamp, n)] = [shared] * min(same_stamp, n)
    return stamps, born


def seed_salesforce(api, accounts: pd.DataFrame, opportunities: pd.DataFrame, tickets: pd.DataFrame,
                    owners: pd.DataFrame | None, *, seed: int = 0) -> dict[str, str]:
    """Insert Users, Accounts, Opportunities and Cases; returns canonical account_id -> Salesforce Id.

    Accounts, Opportunities and Cases get modification times spread over the past year (`spread_stamps`).
    """
    m = mapping()["salesforce"]
    clock_now = api.clock.now()
    now = sf_datetime(clock_now)
    rng = np.random.default_rng([seed, 1])

    def restamp(obj: str, ids: list[str], created: list | None = None) -> None:
        stamps, born = spread_stamps(rng, len(ids), clock_now, created, style="sf")
        _restamp_salesforce(api, obj, ids, stamps, born)

    with api.lock:
        user_ids: dict[str, str] = {}
        managers: dict[str, str] = {}
        if owners is not None and len(owners):
            for o in owners.to_dict("records"):
                email = str(o["email"])
                first, last = _split_name(str(o.get("name") or ""), email)
                user_ids[email.lower()] = api._insert_raw("User", {
                    "Username": email, "Email": email, "Name": f"{first} {last}".strip(), "FirstName": first,
                    "LastName": last, "Title": str(o.get("role") or ""), "IsActive": True}, now)
                manager = o.get("manager_email")
                if isinstance(manager, str) and manager:
                    managers[email.lower()] = manager.lower()
            for email, manager in managers.items():
                if manager in user_ids:
                    api.records["User"][user_ids[email]]["ManagerId"] = user_ids[manager]

        def make_user(email: str) -> str:
            first, last = _split_name("", email)
            return api._insert_raw("User", {"Username": email, "Email": email, "Name": first, "FirstName": first,
                                            "LastName": last, "IsActive": True}, now)

        uid = api.integration_user_id
        n = len(accounts)
        cols = _columns(accounts, ACCOUNTS, m["account"]["read"], "sf", {})
        canon_ids = accounts["account_id"].astype(str).tolist()
        cols["OwnerId"] = _resolve_owners(_emails(accounts), user_ids, make_user, uid)
        if "Name" not in cols:
            cols["Name"] = [f"Account {c}" for c in canon_ids]
        if "domain" in accounts.columns:
            cols["Website"] = _py(accounts["domain"], "str", "sf")
        acc_ids = api.insert_columns("Account", cols, n, now)
        restamp("Account", acc_ids)
        acc_map = dict(zip(canon_ids, acc_ids))

        if opportunities is not None and len(opportunities):
            opp = opportunities.copy()
            if "probability" in opp.columns:
                opp["probability"] = pd.to_numeric(opp["probability"], errors="coerce") * 100.0
            cols = _columns(opp, OPPORTUNITIES, m["opportunity"]["read"], "sf",
                            {"type": (crm_values.SALESFORCE, "opportunity_type")})
            cols["AccountId"] = _account_refs(opp, acc_map)
            cols["OwnerId"] = _resolve_owners(_emails(opp), user_ids, make_user, uid)
            restamp("Opportunity", api.insert_columns("Opportunity", cols, len(opp), now))

        if tickets is not None and len(tickets):
            cols = _columns(tickets, TICKETS, m["ticket"]["read"], "sf",
                            {"priority": (crm_values.SALESFORCE, "priority"),
                             "status": (crm_values.SALESFORCE, "ticket_status")})
            cols["AccountId"] = _account_refs(tickets, acc_map)
            cols["Subject"] = _subjects(tickets)
            if "Status" in cols:
                cols["IsClosed"] = [s == "Closed" for s in cols["Status"]]
            cols["OwnerId"] = repeat(uid)
            created = list(cols["CreatedDate"]) if "CreatedDate" in cols else None
            restamp("Case", api.insert_columns("Case", cols, len(tickets), now), created)
    return acc_map


def seed_hubspot(api, accounts: pd.DataFrame, opportunities: pd.DataFrame, tickets: pd.DataFrame,
                 owners: pd.DataFrame | None, *, seed: int = 0, same_stamp: int = 0) -> dict[str, str]:
    """Insert owners, companies, deals and tickets (with associations); returns canonical id -> company id.

    Modification times are spread over the past year; with `same_stamp` the first N records of each
    object share one instant, newer than the others (see the module docstring).
    """
    m = mapping()["hubspot"]
    clock_now = api.clock.now()
    rng = np.random.default_rng([seed, 2])
    shared = hs_datetime(clock_now - SAME_STAMP_AGE)

    def stamped(n: int, created: list | None = None) -> dict[str, list[str]]:
        stamps, born = _stamps_for(rng, n, clock_now, created, same_stamp, shared)
        return {"stamps": stamps, "created": born}

    with api.lock:
        owner_ids: dict[str, str] = {}
        if owners is not None and len(owners):
            for o in owners.to_dict("records"):
                first, last = _split_name(str(o.get("name") or ""), str(o["email"]))
                owner_ids[str(o["email"]).lower()] = api.add_owner(str(o["email"]), first, last)["id"]

        def make_owner(email: str) -> str:
            first, last = _split_name("", email)
            return api.add_owner(email, first, last)["id"]

        cols = _columns(accounts, ACCOUNTS, m["account"]["read"], "hs", {})
        canon_ids = accounts["account_id"].astype(str).tolist()
        cols["hubspot_owner_id"] = _resolve_owners(_emails(accounts), owner_ids, make_owner, None)
        if "name" not in cols:
            cols["name"] = [f"Company {c}" for c in canon_ids]
        if "domain" in accounts.columns:
            cols["domain"] = _py(accounts["domain"], "str", "hs")
        comp_map = dict(zip(canon_ids, api.insert_columns("companies", cols, len(accounts), **stamped(len(accounts)))))

        if opportunities is not None and len(opportunities):
            cols = _columns(opportunities, OPPORTUNITIES, m["opportunity"]["read"], "hs",
                            {"type": (crm_values.HUBSPOT, "opportunity_type")})
            if "close_date" in opportunities.columns and "closedate" in cols:  # closedate is a datetime property
                cols["closedate"] = _py(opportunities["close_date"], "datetime", "hs")
            cols["hubspot_owner_id"] = _resolve_owners(_emails(opportunities), owner_ids, make_owner, None)
            cols["pipeline"] = repeat("default")
            deal_ids = api.insert_columns("deals", cols, len(opportunities), **stamped(len(opportunities)))
            api.link_many("deals", deal_ids, "companies", _account_refs(opportunities, comp_map))

        if tickets is not None and len(tickets):
            cols = _columns(tickets, TICKETS, m["ticket"]["read"], "hs",
                            {"priority": (crm_values.HUBSPOT, "priority"),
                             "status": (crm_values.HUBSPOT, "ticket_status")})
            created = cols.pop("createdate", None)
            cols["hs_pipeline"] = repeat("0")
            cols["subject"] = _subjects(tickets)
            ticket_ids = api.insert_columns("tickets", cols, len(tickets), **stamped(len(tickets), created))
            api.link_many("tickets", ticket_ids, "companies", _account_refs(tickets, comp_map))
    return comp_map


def seed_slack(api, owners: pd.DataFrame | None) -> None:
    """Every owner becomes a Slack user with the same email (DM escalations look them up by email)."""
    if owners is None:
        return
    for o in owners.to_dict("records"):
        api.add_user(str(o["email"]), str(o.get("name") or o["email"]))
