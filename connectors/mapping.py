"""CRM records -> canonical frames, with the field mapping of config `mapping:`.

Shared by the Salesforce and HubSpot connectors so both produce exactly the
columns of config/canonical.py: fields renamed by the mapping, record ids
prefixed (`sf:` / `hs:`), enum spellings translated with connectors.crm_values,
then `validate_frame` coerces dtypes and names every bad value (the value is
cleared and reported, never guessed or zeroed).
"""

from __future__ import annotations

import pandas as pd

from healthsync.config.canonical import SPECS, FrameSpec, validate_frame
from healthsync.connectors import crm_values

#: mapping section (config `mapping.<crm>.<section>`) for each canonical object
SECTIONS = {"accounts": "account", "opportunities": "opportunity", "tickets": "ticket", "tasks": "task"}

#: canonical column -> crm_values table kind, per canonical object
VALUE_KINDS = {
    "opportunities": {"type": "opportunity_type"},
    "tickets": {"priority": "priority", "status": "ticket_status"},
    "tasks": {"status": "task_status"},
}

#: columns holding record ids that get the CRM prefix
ID_COLUMNS = {
    "accounts": ("account_id",),
    "opportunities": ("opportunity_id", "account_id"),
    "tickets": ("ticket_id", "account_id"),
    "tasks": ("task_id", "account_id"),
}


def section(mapping: dict, object: str, crm: str) -> dict:
    """The mapping section of one canonical object; a clear error names the missing key."""
    from healthsync.connectors.base import ConfigurationError

    name = SECTIONS.get(object)
    if name is None:
        raise ConfigurationError(f"unknown object {object!r} (expected one of {', '.join(SECTIONS)}, owners)")
    if not isinstance(mapping, dict) or name not in mapping:
        raise ConfigurationError(f"mapping.{crm}.{name} is missing from the configuration")
    return mapping[name]


def prefix_ids(series: pd.Series, prefix: str) -> pd.Series:
    """`001ABC` -> `sf:001ABC`; missing stays missing; already-prefixed values are kept."""
    text = series.astype("string").str.strip()
    text = text.where(text != "", pd.NA)
    has = text.str.startswith(f"{prefix}:").fillna(False).astype(bool)
    return text.where(has | text.isna(), prefix + ":" + text)


def strip_prefix(record_id: str, prefix: str) -> str | None:
    """`sf:001ABC` -> `001ABC`; None when the id does not belong to this CRM."""
    if not isinstance(record_id, str) or not record_id.startswith(prefix + ":"):
        return None
    raw = record_id[len(prefix) + 1 :].strip()
    return raw or None


def translate_values(frame: pd.DataFrame, object: str, table: dict, aliases: dict | None) -> pd.DataFrame:
    """Map CRM enum spellings to canonical values; unknown spellings pass through (the validator reports them)."""
    for column, kind in VALUE_KINDS.get(object, {}).items():
        if column in frame.columns:
            lookup = crm_values.reverse(table, kind, aliases)
            raw = frame[column]
            mapped = raw.map(lookup)
            frame[column] = mapped.where(mapped.notna(), raw)
    return frame


def finish(frame: pd.DataFrame, object: str, prefix: str) -> tuple[pd.DataFrame, list[str]]:
    """Prefix ids, validate against the canonical spec; returns (frame, problem lines)."""
    for column in ID_COLUMNS.get(object, ()):
        if column in frame.columns:
            frame[column] = prefix_ids(frame[column], prefix)
    spec: FrameSpec = SPECS[object]
    for c in spec.columns:  # every contract column present, even when the CRM has no field for it
        if c.name not in frame.columns:
            frame[c.name] = pd.NA
    ordered = spec.names + [c for c in frame.columns if c not in spec.names]
    valid, report = validate_frame(frame[ordered], spec)
    return valid, report.lines()
