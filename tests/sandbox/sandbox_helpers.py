"""Helpers for the sandbox tests: a small hand-made canonical portfolio and a running Sandbox with official clients.

The portfolio is built here (not by connectors.demo_data) so these tests pin exact values:
30 accounts, 2 opportunities and 1 ticket each, 3 owners (csm, manager, vp).
"""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import requests
import hubspot
from simple_salesforce import Salesforce
from slack_sdk import WebClient

from healthsync.connectors.sandbox import Sandbox

OWNERS = pd.DataFrame({
    "email": ["csm.one@example.com", "mgr.two@example.com", "vp.three@example.com"],
    "name": ["Casey One", "Morgan Two", "Vic Three"],
    "role": ["csm", "manager", "vp"],
    "manager_email": ["mgr.two@example.com", "vp.three@example.com", None],
})


def tiny_portfolio(n: int = 30) -> SimpleNamespace:
    ids = [f"A{i:04d}" for i in range(n)]
    accounts = pd.DataFrame({
        "account_id": ids,
        "name": [f"Acme {i}" for i in range(n)],
        "segment": ["enterprise", "mid_market", "smb"] * (n // 3) + ["smb"] * (n % 3),
        "arr": [1000.0 * (i + 1) for i in range(n)],
        "seats_purchased": [10 + i for i in range(n)],
        "active_users_30d": [5 + i for i in range(n)],
        "nps": [float(i % 11) for i in range(n)],
        "exec_sponsor": ["active", "partial", "none"] * (n // 3) + ["none"] * (n % 3),
        "renewal_date": pd.to_datetime("2027-01-01") + pd.to_timedelta(range(n), unit="D"),
        "owner_email": [OWNERS.email[i % 3] for i in range(n)],
        "domain": [f"acme{i}.example.com" for i in range(n)],
    })
    opps = pd.DataFrame({
        "opportunity_id": [f"O{i:04d}" for i in range(2 * n)],
        "account_id": [ids[i // 2] for i in range(2 * n)],
        "name": [f"Deal {i}" for i in range(2 * n)],
        "stage": ["Negotiation", "Closed Won"] * n,
        "amount": [500.0 * (i + 1) for i in range(2 * n)],
        "probability": [0.6, 1.0] * n,
        "close_date": pd.to_datetime("2026-12-01") + pd.to_timedelta(range(2 * n), unit="D"),
        "type": ["renewal", "expansion"] * n,
        "forecast_category": ["Pipeline", "Closed"] * n,
        "is_closed": [False, True] * n,
        "is_won": [False, True] * n,
        "owner_email": [OWNERS.email[0]] * (2 * n),
    })
    tickets = pd.DataFrame({
        "ticket_id": [f"T{i:04d}" for i in range(n)],
        "account_id": ids,
        "priority": ["P1", "P2", "P3", "P4", "P2"] * (n // 5) + ["P3"] * (n % 5),
        "status": ["open", "closed"] * (n // 2) + ["open"] * (n % 2),
        "created_at": pd.to_datetime("2026-11-01T08:00:00") + pd.to_timedelta(range(n), unit="h"),
        "closed_at": [pd.NaT if i % 2 == 0 else pd.Timestamp("2026-11-20") for i in range(n)],
        "escalated": [i % 7 == 0 for i in range(n)],
    })
    return SimpleNamespace(accounts=accounts, opportunities=opps, tickets=tickets, owners=OWNERS.copy())


def sf_session(sb: Sandbox) -> requests.Session:
    s = requests.Session()
    s.verify = sb.ready["salesforce"]["ca_file"]
    s.trust_env = False
    return s


def sf_client(sb: Sandbox, token: str | None = None) -> Salesforce:
    r = sb.ready["salesforce"]
    return Salesforce(instance_url=r["instance_url"], session_id=token or r["access_token"], session=sf_session(sb),
                      version="59.0")


def hs_client(sb: Sandbox, **kw) -> hubspot.HubSpot:
    r = sb.ready["hubspot"]
    return hubspot.HubSpot(access_token=r["access_token"], host=r["host"], base_url=r["host"], **kw)


def slack_client(sb: Sandbox) -> WebClient:
    return WebClient(token=sb.ready["slack"]["token"], base_url=sb.ready["slack"]["base_url"])
