"""A running sandbox wired to the real connectors, a fresh state store and a hand-built scores frame.

Shared by the episode and SLA tests (tests/sync/test_playbooks_*.py, test_escalation_*.py):
the product talks to the emulators through simple-salesforce, hubspot-api-client and
slack-sdk over loopback HTTP; nothing is monkeypatched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import pytest
import yaml

from healthsync.config.settings import Settings, load_settings
from healthsync.connectors.demo_data import generate_portfolio
from healthsync.connectors.hubspot import hubspot_from_ready
from healthsync.connectors.salesforce import salesforce_from_ready
from healthsync.connectors.sandbox import Sandbox
from healthsync.connectors.sandbox.slack import DEFAULT_CHANNELS
from healthsync.connectors.slack import slack_from_ready
from healthsync.sync.clock import now_for
from healthsync.sync.run import load_owners
from healthsync.sync.state import StateStore, open_store

#: the sandbox's channels plus per-segment fallback channels some tests configure
CHANNELS = DEFAULT_CHANNELS + ("cs-enterprise", "cs-mid-market", "cs-smb")
ACCOUNTS = 40
SEED = 3


@dataclass
class World:
    sb: Sandbox
    settings: Settings
    store: StateStore
    connectors: dict
    slack: object
    owners: pd.DataFrame

    def now(self) -> datetime:
        return now_for(self.sb.ready)

    def close(self) -> None:
        for c in self.connectors.values():
            c.close()
        self.store.close()
        self.sb.stop()


def settings_for(tmp_path, **sections) -> Settings:
    user = {"state": {"url": f"sqlite:///{tmp_path}/state.db"}, **sections}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(user))
    return load_settings(cfg, environ={})


def start_world(tmp_path, sandbox_options: dict | None = None, connector_options: dict | None = None, **sections) -> World:
    """`sandbox_options` go to Sandbox (e.g. search_lag_seconds), `connector_options` to both connectors (e.g. retry)."""
    sb = Sandbox(accounts=ACCOUNTS, seed=SEED, precreate_fields=True, slack_channels=CHANNELS, slack_message_interval_s=0,
                 **(sandbox_options or {})).start()
    try:
        settings = settings_for(tmp_path, **sections)
        connectors = {
            "salesforce": salesforce_from_ready(sb.ready, settings.mapping.salesforce.model_dump(), **(connector_options or {})),
            "hubspot": hubspot_from_ready(sb.ready, settings.mapping.hubspot.model_dump(), **(connector_options or {})),
        }
        # as `healthsync run` does: the CRM users (Salesforce User.Title / ManagerId) are the ladder
        owners = load_owners(connectors)
        expected = generate_portfolio(ACCOUNTS, SEED).owners
        assert set(owners.dropna(subset=["manager_email"])["email"]) == set(expected.dropna(subset=["manager_email"])["email"])
        return World(sb, settings, open_store(settings.state.url), connectors, slack_from_ready(sb.ready), owners)
    except BaseException:
        sb.stop()
        raise


def crm_accounts(sb: Sandbox) -> pd.DataFrame:
    """(crm, account_id, name, owner_email, segment, arr, renewal_date) of every account in both CRMs."""
    users = {u["Id"]: u["Email"] for u in sb.records("salesforce", "User")}
    sf = [
        {"crm": "salesforce", "account_id": f"sf:{r['Id']}", "name": r["Name"], "owner_email": users.get(r.get("OwnerId")),
         "segment": r.get("Segment__c"), "arr": r.get("ARR__c"), "renewal_date": r.get("Renewal_Date__c")}
        for r in sb.records("salesforce", "Account") if not r.get("IsDeleted")
    ]
    with sb.hubspot.lock:
        hs_owner = {str(o["id"]): o["email"] for o in sb.hubspot.owners}
    hs = [
        {"crm": "hubspot", "account_id": f"hs:{r['id']}", "name": r["properties"].get("name"),
         "owner_email": hs_owner.get(str(r["properties"].get("hubspot_owner_id"))), "segment": r["properties"].get("segment"),
         "arr": r["properties"].get("arr"), "renewal_date": r["properties"].get("renewal_date")}
        for r in sb.records("hubspot", "companies") if not r.get("archived")
    ]
    return pd.DataFrame(sf + hs)


def scores_frame(accounts: pd.DataFrame, overrides: dict[str, dict] | None = None) -> pd.DataFrame:
    """A contract-shaped scores frame: everyone healthy-ish (score 65, no trigger) unless overridden per account."""
    n = len(accounts)
    frame = accounts.copy()
    frame["arr"] = pd.to_numeric(frame["arr"], errors="coerce")
    frame["renewal_date"] = pd.to_datetime("2028-01-01")  # far away: renewal_risk stays quiet unless overridden
    base = {"score": 65.0, "band": "Yellow", "raw_band": "Yellow", "confidence": 1.0, "delta_30d": 0.0, "delta_90d": 0.0,
            "momentum": "stable", "drivers": "Logins down to 0.4/user/week; 2 escalations in 90 days",
            "previous_score": 65.0, "previous_band": "Yellow"}
    for k, v in base.items():
        frame[k] = [v] * n
    for account_id, values in (overrides or {}).items():
        for k, v in values.items():
            frame.loc[frame["account_id"] == account_id, k] = v
    return frame


RED = {"score": 30.0, "band": "Red", "raw_band": "Red", "delta_30d": -5.0, "momentum": "down"}


# Fixtures for the modules that share this world: each module defines its own `world` (its options
# differ) and imports these two (`from sandbox_world import accounts, store`).
@pytest.fixture
def store(world, tmp_path):
    """A fresh state database per test (the sandbox is shared; each test uses its own accounts)."""
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


@pytest.fixture(scope="module")
def accounts(world):
    """The accounts of both sandbox CRMs, read once per module."""
    return crm_accounts(world.sb)
