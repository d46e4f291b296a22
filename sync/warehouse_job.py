"""The warehouse stage of a run: usage aggregated in the warehouse, matched to CRM accounts.

    pull (CRMs) -> warehouse_stage -> score (engine, with the matched usage columns) -> ...

`warehouse_stage` runs the pushdown pull (connectors/warehouse.py) and derives the usage
rates (engine/usage.py); `match_accounts` attaches the rows to CRM accounts inside
`score_replica`, by the CRM field holding the product's account id (`account_match.crm_field`,
e.g. product_account_id, read from Product_Account_Id__c / product_account_id) or by the
normalised web domain (`account_match.on: domain`).

How it ends (exit codes, sync/summary.py):
- a bad URL, a missing dialect, a missing table or column, an invalid query: ConfigurationError
  naming the `sources.warehouse...` key, the run fails with exit 2 before anything is written;
- an unreachable warehouse: the CRMs' own stages (pull, score, write-back, playbooks,
  escalation) go on without warehouse columns (the CRM's own usage fields, where mapped, stand
  in; warehouse-only metrics are absent and their weight redistributed), and the run ends
  `stopped` (exit 3) with the reason, so the next run retries.

Which warehouse: `sources.warehouse` when configured; otherwise, in sandbox mode, the DuckDB
file of demo usage that the sandbox wrote (ready["warehouse"]), read with the demo's tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from healthsync.config.settings import AccountMatch, Settings, WarehouseEvents, WarehouseSource, WarehouseTouchpoints
from healthsync.connectors.base import ConfigurationError
from healthsync.connectors.identity import normalize_domain
from healthsync.connectors.warehouse import UsagePull, WarehouseConnector, WarehouseUnreachableError
from healthsync.engine.keys import positions
from healthsync.engine.usage import derive_usage

log = logging.getLogger(__name__)

KEY = "sources.warehouse"


@dataclass
class MatchStats:
    """How warehouse keys met CRM accounts (the key-match data-quality KPIs)."""

    keys: int = 0  # distinct account keys with usage in the window
    keys_matched: int = 0
    accounts: int = 0  # CRM accounts scored
    accounts_with_usage: int = 0
    shared_keys: int = 0  # keys claimed by more than one account of the same CRM

    @property
    def key_match_rate(self) -> float | None:
        return self.keys_matched / self.keys if self.keys else None

    @property
    def accounts_without_usage(self) -> int:
        return self.accounts - self.accounts_with_usage


@dataclass
class WarehouseUsage:
    """The warehouse's part of one run: per-key usage, or why there is none."""

    config: WarehouseSource
    pull: UsagePull | None = None
    usage: pd.DataFrame | None = None  # derived columns, one row per account key
    unreachable: str | None = None
    match: MatchStats | None = None
    notes: list[str] = field(default_factory=list)


def sandbox_warehouse(ready: dict | None) -> WarehouseSource | None:
    """The demo usage of a sandbox (written by the sandbox next to its emulators), when it has one."""
    info = (ready or {}).get("warehouse")
    if not info or not info.get("url"):
        return None
    return WarehouseSource(
        url=info["url"],
        events=WarehouseEvents(table="usage_events", account_key="account_key", timestamp="occurred_at",
                               user_id="user_id", feature="feature", value="value"),
        touchpoints=WarehouseTouchpoints(table="touchpoints", account_key="account_key", timestamp="touched_at",
                                         channel="channel"),
        account_match=AccountMatch(crm_field="product_account_id"),
    )


def warehouse_config(settings: Settings, ready: dict | None) -> WarehouseSource | None:
    """The warehouse this run reads: the configured one, else the sandbox's demo usage, else none."""
    configured = settings.sources.warehouse
    if configured.configured:
        return configured
    if not configured.enabled:
        return None
    return sandbox_warehouse(ready)


def match_column(settings: Settings, config: WarehouseSource) -> str:
    """The canonical accounts column holding the match key (`account_match`)."""
    match = config.account_match
    if match.on == "domain":
        return "domain"
    field_name = match.crm_field
    for crm in ("salesforce", "hubspot"):
        read = getattr(settings.mapping, crm).account.read
        if field_name in read:
            return field_name
        for column, crm_field in read.items():
            if crm_field == field_name:
                return column
    raise ConfigurationError(
        f"{KEY}.account_match.crm_field: {field_name!r} is not an accounts column read from the CRMs; "
        f"map it under mapping.salesforce.account.read / mapping.hubspot.account.read (e.g. "
        f"product_account_id: Product_Account_Id__c) or match on the domain ({{on: domain}})"
    )


def warehouse_stage(settings: Settings, ready: dict | None, now: datetime) -> WarehouseUsage | None:
    """Pull the usage features from the warehouse (None when no warehouse is configured).

    ConfigurationError propagates (exit 2); an unreachable warehouse is returned as
    `unreachable` so the caller can go on with the CRMs and end the run with exit 3.
    """
    config = warehouse_config(settings, ready)
    if config is None:
        return None
    match_column(settings, config)  # a wrong match key is a configuration error before any query
    result = WarehouseUsage(config=config)
    connector = WarehouseConnector(config)
    try:
        result.pull = connector.pull(now)
    except WarehouseUnreachableError as exc:
        log.warning("%s", exc)
        result.unreachable = str(exc)
        return result
    finally:
        connector.close()
    as_of = pd.Timestamp(now)
    result.usage = derive_usage(result.pull.features, as_of.tz_convert("UTC").tz_localize(None) if as_of.tzinfo else as_of)
    if config.events.features_available:
        result.usage["features_available"] = float(config.events.features_available)
    return result


def _keys(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="string")
    if column == "domain":
        return normalize_domain(frame[column])
    text = frame[column].astype("string").str.strip()
    return text.where(text.fillna("") != "", pd.NA)


def match_accounts(accounts: pd.DataFrame, usage: WarehouseUsage, settings: Settings) -> pd.DataFrame | None:
    """Usage rows per CRM account (`account_id` + usage columns); sets `usage.match`.

    A key held by accounts in both CRMs (the same customer in Salesforce and HubSpot) gives
    both of them its usage. None when the warehouse brought nothing back (unreachable).
    Keys are joined with Arrow hash kernels (engine/keys.py): a million accounts in a second.
    """
    if usage.usage is None:
        return None
    column = match_column(settings, usage.config)
    frame = usage.usage.reset_index(drop=True)
    wh_keys = frame["account_key"].astype("string").str.strip()
    if column == "domain":
        wh_keys = normalize_domain(wh_keys)
    usable = (wh_keys.notna() & (wh_keys != "")).to_numpy(dtype=bool) & ~wh_keys.duplicated(keep="last").to_numpy(dtype=bool)
    frame, wh_keys = frame.loc[usable].reset_index(drop=True), wh_keys[usable].reset_index(drop=True)
    crm_keys = _keys(accounts, column).fillna("")
    pos = positions(crm_keys, wh_keys) if len(wh_keys) else np.full(len(accounts), -1, dtype=np.int64)
    has = pos >= 0
    stats = MatchStats(keys=len(wh_keys), accounts=len(accounts))
    matched_pos = pos[has]
    stats.keys_matched = int(np.count_nonzero(np.bincount(matched_pos, minlength=len(wh_keys))))
    stats.accounts_with_usage = int(has.sum())
    # a key held by two accounts of the same CRM: (key, crm) pairs counted more than once
    crm_codes = pd.factorize(accounts["crm"])[0] if "crm" in accounts.columns else np.zeros(len(accounts), dtype=np.int64)
    width = int(crm_codes.max()) + 2 if len(crm_codes) else 1
    pairs = np.bincount(matched_pos * width + (crm_codes[has] + 1), minlength=len(wh_keys) * width)
    stats.shared_keys = int(np.count_nonzero(pairs > 1))
    usage.match = stats
    matched = frame.iloc[pos[has]].drop(columns=["account_key"]).reset_index(drop=True)
    matched.insert(0, "account_id", accounts["account_id"].to_numpy()[has])
    return matched
