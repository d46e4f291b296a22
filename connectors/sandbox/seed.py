"""Seed the emulated CRMs and Slack from canonical frames (the demo generator's output or fixtures).

Canonical columns are mapped to CRM fields through the `mapping:` section of
config/default.yaml (the inverse of each `read:` entry) and enum values through
connectors/crm_values.py, so the connectors reading the sandbox back get exactly the
canonical values that went in. Each CRM issues its own ids; the canonical ids of the
input frames are only used to link opportunities and tickets to their account.
Salesforce Opportunity.Probability is a percent (0-100); HubSpot hs_deal_stage_probability is 0-1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from config.canonical import ACCOUNTS, OPPORTUNITIES, TICKETS
from connectors import crm_values
from connectors.sandbox.clock import sf_datetime
from connectors.sandbox.schema import mapping

_REF_COLUMNS = {"account_id", "opportunity_id", "ticket_id", "owner_email"}


def _py(values: pd.Series, kind: str, style: str) -> list[Any]:
    """A canonical column -> Python values for one CRM (style "sf" typed, "hs" strings); missing -> None."""
    if kind in ("date", "datetime"):
        ts = pd.to_datetime(values, errors="coerce", utc=True).dt.tz_localize(None)
        raw = ts.to_numpy(dtype="datetime64[ms]")
        text = pd.Series(np.datetime_as_string(raw, unit="D" if kind == "date" else "ms"), dtype=object)
        if kind == "datetime":
            text = text + ("+0000" if style == "sf" else "Z")
        return text.where(~np.isnat(raw), None).tolist()
    if kind in ("float", "int"):
        num = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
        missing = np.isnan(num)
        if style == "sf":
            py = num.tolist()
            if kind == "int":
                return [None if m else int(v) for v, m in zip(py, missing.tolist())]
            return [None if m else v for v, m in zip(py, missing.tolist())]
        whole = np.where(missing, 0, num)
        integral = whole == np.floor(whole)
        text = np.where(integral, whole.astype(np.int64).astype(str), num.astype(str)).astype(object)
        text[missing] = None
        return text.tolist()
    present = values.notna().to_numpy()
    if kind == "bool":
        truth = values.astype(object).astype(str).str.strip().str.lower().isin(["true", "1", "yes", "t", "y"]).to_numpy()
        out = truth.astype(object) if style == "sf" else np.where(truth, "true", "false").astype(object)
        out[~present] = None
        return out.tolist()
    out = values.astype(object).to_numpy().copy()
    out[~present] = None
    return [v if v is None or isinstance(v, str) else str(v) for v in out.tolist()]


def _columns(frame: pd.DataFrame, spec, read_map: dict, style: str, enums: dict[str, tuple[dict, str]]) -> dict[str, list]:
    """CRM field -> list of values for every mapped, non-reference canonical column present in `frame`."""
    out = {}
    for column, crm_field in read_map.items():
        if column in _REF_COLUMNS or column not in frame.columns or "." in crm_field:
            continue
        kind = spec.column(column).kind
        values = frame[column]
        if column in enums:
            table, key = enums[column]
            values = values.astype(object).replace(table[key])
            kind = "str"
        out[crm_field] = _py(values, kind, style)
    return out


def _rows(columns: dict[str, list], n: int) -> list[dict]:
    names = list(columns)
    return [dict(zip(names, vals)) for vals in zip(*(columns[k] for k in names))] if names else [{} for _ in range(n)]


def _split_name(name: str, email: str) -> tuple[str, str]:
    name = (name or email.split("@")[0]).strip()
    first, _, last = name.partition(" ")
    return first, last or first


def seed_salesforce(api, accounts: pd.DataFrame, opportunities: pd.DataFrame, tickets: pd.DataFrame,
                    owners: pd.DataFrame | None) -> dict[str, str]:
    """Insert Users, Accounts, Opportunities and Cases; returns canonical account_id -> Salesforce Id."""
    m = mapping()["salesforce"]
    now = sf_datetime(api.clock.now())
    with api.lock:
        user_ids: dict[str, str] = {}
        role_of: dict[str, str] = {}
        if owners is not None and len(owners):
            for o in owners.to_dict("records"):
                email = str(o["email"])
                first, last = _split_name(str(o.get("name") or ""), email)
                user_ids[email.lower()] = api._insert_raw("User", {
                    "Username": email, "Email": email, "Name": f"{first} {last}".strip(), "FirstName": first,
                    "LastName": last, "Title": str(o.get("role") or ""), "IsActive": True}, now)
                role_of[email.lower()] = str(o.get("manager_email") or "")
            for email, manager in role_of.items():
                if manager and manager.lower() in user_ids:
                    api.records["User"][user_ids[email]]["ManagerId"] = user_ids[manager.lower()]

        def owner_id(email) -> str:
            if not isinstance(email, str) or not email:
                return api.integration_user_id
            key = email.lower()
            if key not in user_ids:
                first, last = _split_name("", email)
                user_ids[key] = api._insert_raw("User", {"Username": email, "Email": email, "Name": first,
                                                         "FirstName": first, "LastName": last, "IsActive": True}, now)
            return user_ids[key]

        acc_map: dict[str, str] = {}
        cols = _columns(accounts, ACCOUNTS, m["account"]["read"], "sf", {})
        rows = _rows(cols, len(accounts))
        owners_col = accounts["owner_email"].tolist() if "owner_email" in accounts.columns else [None] * len(accounts)
        domains = accounts["domain"].tolist() if "domain" in accounts.columns else [None] * len(accounts)
        canon_ids = accounts["account_id"].astype(str).tolist()
        for canon_id, row, owner, domain in zip(canon_ids, rows, owners_col, domains):
            row["OwnerId"] = owner_id(owner)
            row["Name"] = row.get("Name") or f"Account {canon_id}"
            if isinstance(domain, str) and domain:
                row["Website"] = domain
        acc_map = dict(zip(canon_ids, api.insert_many("Account", rows, now)))

        if opportunities is not None and len(opportunities):
            opp = opportunities.copy()
            if "probability" in opp.columns:
                opp["probability"] = pd.to_numeric(opp["probability"], errors="coerce") * 100.0
            cols = _columns(opp, OPPORTUNITIES, m["opportunity"]["read"], "sf",
                            {"type": (crm_values.SALESFORCE, "opportunity_type")})
            owners_col = opp["owner_email"].tolist() if "owner_email" in opp.columns else [None] * len(opp)
            rows = _rows(cols, len(opp))
            for acc, row, owner in zip(opp["account_id"].astype(str).tolist(), rows, owners_col):
                row["AccountId"] = acc_map.get(acc)
                row["OwnerId"] = owner_id(owner)
                row["Name"] = row.get("Name") or "Opportunity"
            api.insert_many("Opportunity", rows, now)

        if tickets is not None and len(tickets):
            cols = _columns(tickets, TICKETS, m["ticket"]["read"], "sf",
                            {"priority": (crm_values.SALESFORCE, "priority"),
                             "status": (crm_values.SALESFORCE, "ticket_status")})
            rows = _rows(cols, len(tickets))
            uid = api.integration_user_id
            for acc, tid, row in zip(tickets["account_id"].astype(str).tolist(), tickets["ticket_id"].astype(str).tolist(),
                                     rows):
                row["AccountId"] = acc_map.get(acc)
                row["Subject"] = f"Support ticket {tid}"
                row["IsClosed"] = row.get("Status") == "Closed"
                row["OwnerId"] = uid
            api.insert_many("Case", rows, now)
    return acc_map


def seed_hubspot(api, accounts: pd.DataFrame, opportunities: pd.DataFrame, tickets: pd.DataFrame,
                 owners: pd.DataFrame | None) -> dict[str, str]:
    """Insert owners, companies, deals and tickets (with associations); returns canonical id -> company id."""
    m = mapping()["hubspot"]
    with api.lock:
        owner_ids: dict[str, str] = {}
        if owners is not None and len(owners):
            for o in owners.to_dict("records"):
                first, last = _split_name(str(o.get("name") or ""), str(o["email"]))
                owner_ids[str(o["email"]).lower()] = api.add_owner(str(o["email"]), first, last)["id"]

        def owner_id(email) -> str | None:
            if not isinstance(email, str) or not email:
                return None
            key = email.lower()
            if key not in owner_ids:
                first, last = _split_name("", email)
                owner_ids[key] = api.add_owner(email, first, last)["id"]
            return owner_ids[key]

        comp_map: dict[str, str] = {}
        cols = _columns(accounts, ACCOUNTS, m["account"]["read"], "hs", {})
        owners_col = accounts["owner_email"].tolist() if "owner_email" in accounts.columns else [None] * len(accounts)
        domains = accounts["domain"].tolist() if "domain" in accounts.columns else [None] * len(accounts)
        canon_ids = accounts["account_id"].astype(str).tolist()
        rows = _rows(cols, len(accounts))
        for canon_id, row, owner, domain in zip(canon_ids, rows, owners_col, domains):
            row["hubspot_owner_id"] = owner_id(owner)
            row["name"] = row.get("name") or f"Company {canon_id}"
            if isinstance(domain, str) and domain:
                row["domain"] = domain
        comp_map = dict(zip(canon_ids, api.insert_many("companies", rows)))

        if opportunities is not None and len(opportunities):
            cols = _columns(opportunities, OPPORTUNITIES, m["opportunity"]["read"], "hs",
                            {"type": (crm_values.HUBSPOT, "opportunity_type")})
            if "close_date" in opportunities.columns and "closedate" in cols:  # closedate is a datetime property
                cols["closedate"] = _py(opportunities["close_date"], "datetime", "hs")
            owners_col = (opportunities["owner_email"].tolist() if "owner_email" in opportunities.columns
                          else [None] * len(opportunities))
            rows = _rows(cols, len(opportunities))
            for row, owner in zip(rows, owners_col):
                row["hubspot_owner_id"] = owner_id(owner)
                row["pipeline"] = "default"
                row["dealname"] = row.get("dealname") or "Deal"
            deal_ids = api.insert_many("deals", rows)
            api.link_many("deals", deal_ids, "companies",
                          [comp_map.get(a) for a in opportunities["account_id"].astype(str).tolist()])

        if tickets is not None and len(tickets):
            cols = _columns(tickets, TICKETS, m["ticket"]["read"], "hs",
                            {"priority": (crm_values.HUBSPOT, "priority"),
                             "status": (crm_values.HUBSPOT, "ticket_status")})
            created = cols.pop("createdate", None)
            rows = _rows(cols, len(tickets))
            for tid, row in zip(tickets["ticket_id"].astype(str).tolist(), rows):
                row["hs_pipeline"] = "0"
                row["subject"] = f"Support ticket {tid}"
            ticket_ids = api.insert_many("tickets", rows, created)
            api.link_many("tickets", ticket_ids, "companies",
                          [comp_map.get(a) for a in tickets["account_id"].astype(str).tolist()])
    return comp_map


def seed_slack(api, owners: pd.DataFrame | None) -> None:
    """Every owner becomes a Slack user with the same email (DM escalations look them up by email)."""
    if owners is None:
        return
    for o in owners.to_dict("records"):
        api.add_user(str(o["email"]), str(o.get("name") or o["email"]))
