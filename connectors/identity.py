"""Cross-CRM identity: which Salesforce account and which HubSpot company are the same customer.

When both CRMs are configured, accounts are matched by a configurable key
(config `mapping.identity.match_on`): the web domain, or a Salesforce account
id stored on the HubSpot company. Nothing is dropped: accounts without a
partner are kept and listed in the report, and ambiguous keys (one domain on
several accounts) are reported instead of guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from healthsync.connectors.base import ConfigurationError

MATCH_KEYS = ("domain", "salesforce_id")


@dataclass
class IdentityReport:
    """What could not be matched, and why."""

    unmatched_salesforce: list[str] = field(default_factory=list)
    unmatched_hubspot: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)  # human-readable lines

    @property
    def matched_all(self) -> bool:
        return not (self.unmatched_salesforce or self.unmatched_hubspot or self.ambiguous)

    def lines(self) -> list[str]:
        out = [f"salesforce {i}: no HubSpot company with the same key" for i in self.unmatched_salesforce]
        out += [f"hubspot {i}: no Salesforce account with the same key" for i in self.unmatched_hubspot]
        return out + self.ambiguous


def normalize_domain(values: pd.Series) -> pd.Series:
    """`https://www.Acme.com/about` -> `acme.com`; blanks become missing."""
    text = values.astype("string").str.strip().str.lower()
    text = text.str.replace(r"^[a-z][a-z0-9+.-]*://", "", regex=True)
    text = text.str.replace(r"^www\.", "", regex=True)
    text = text.str.split("/").str[0].str.split(":").str[0].str.rstrip(".")
    return text.where(text.fillna("") != "", pd.NA)


def _normalize_sf_id(values: pd.Series) -> pd.Series:
    """Salesforce ids as `sf:` + the first 15 characters (the 18-character form only adds a checksum)."""
    text = values.astype("string").str.strip().str.replace(r"^sf:", "", regex=True)
    text = text.where(text.fillna("") != "", pd.NA)
    return "sf:" + text.str.slice(0, 15)


def match_accounts(
    sf_accounts: pd.DataFrame,
    hs_accounts: pd.DataFrame,
    match_on: str = "domain",
    *,
    sf_domain_column: str = "domain",
    hs_domain_column: str = "domain",
    hs_salesforce_id_column: str = "salesforce_account_id",
) -> tuple[pd.DataFrame, IdentityReport]:
    """Pair accounts across CRMs; returns (pairs with `salesforce_id`, `hubspot_id`, `key`), report.

    Both frames carry canonical `account_id`s (`sf:...`, `hs:...`). Keys that
    occur more than once on either side are not paired (reported as ambiguous).
    """
    if match_on not in MATCH_KEYS:
        raise ConfigurationError(f"mapping.identity.match_on must be one of {', '.join(MATCH_KEYS)} (got {match_on!r})")
    for frame, name in ((sf_accounts, "salesforce"), (hs_accounts, "hubspot")):
        if "account_id" not in frame.columns:
            raise ConfigurationError(f"{name} accounts have no account_id column")
    if match_on == "domain":
        for frame, column, name in ((sf_accounts, sf_domain_column, "salesforce"), (hs_accounts, hs_domain_column, "hubspot")):
            if column not in frame.columns:
                raise ConfigurationError(f"{name} accounts have no {column!r} column to match on (mapping.identity.match_on: domain)")
        sf_key = normalize_domain(sf_accounts[sf_domain_column])
        hs_key = normalize_domain(hs_accounts[hs_domain_column])
    else:
        if hs_salesforce_id_column not in hs_accounts.columns:
            raise ConfigurationError(
                f"hubspot accounts have no {hs_salesforce_id_column!r} column "
                "(mapping.identity.hubspot_salesforce_id_property)"
            )
        sf_key = _normalize_sf_id(sf_accounts["account_id"])
        hs_key = _normalize_sf_id(hs_accounts[hs_salesforce_id_column])

    left = pd.DataFrame({"salesforce_id": sf_accounts["account_id"].astype("string").values, "key": sf_key.values})
    right = pd.DataFrame({"hubspot_id": hs_accounts["account_id"].astype("string").values, "key": hs_key.values})
    report = IdentityReport()
    dup_left = left["key"].notna() & left["key"].duplicated(keep=False)
    dup_right = right["key"].notna() & right["key"].duplicated(keep=False)
    for key, ids in left[dup_left].groupby("key")["salesforce_id"]:
        report.ambiguous.append(f"{match_on} {key}: shared by Salesforce accounts {', '.join(sorted(ids))}; not matched")
    for key, ids in right[dup_right].groupby("key")["hubspot_id"]:
        report.ambiguous.append(f"{match_on} {key}: shared by HubSpot companies {', '.join(sorted(ids))}; not matched")
    usable_left = left[left["key"].notna() & ~dup_left]
    usable_right = right[right["key"].notna() & ~dup_right]
    pairs = usable_left.merge(usable_right, on="key", how="inner")[["salesforce_id", "hubspot_id", "key"]]
    report.unmatched_salesforce = sorted(set(left["salesforce_id"].dropna()) - set(pairs["salesforce_id"]))
    report.unmatched_hubspot = sorted(set(right["hubspot_id"].dropna()) - set(pairs["hubspot_id"]))
    return pairs.reset_index(drop=True), report
