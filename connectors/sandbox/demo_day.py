"""A day in the demo world: what customer-success teams change in their CRMs between two runs.

The embedded demo keeps its sandbox between runs (world.py) and moves it on one emulated day
each time. Without edits a rerun would only show that nothing needs sending; with a handful of
accounts changed, it shows that exactly those are sent. So each demo day a few accounts per CRM
change the way accounts do: half of them slip (logins fall, a QBR is missed, an invoice goes
late, the CSM turns red), half recover (the opposite). The edits go through the emulators as a
person's edits would (validated, timestamps move, made by another user than the integration),
so healthsync finds them with its ordinary incremental pull.

Which accounts, and how, depends only on the sandbox's seed and the day number: the same day
of the same world always changes the same accounts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from healthsync.connectors.sandbox.schema import mapping

#: accounts changed per CRM per demo day
DEFAULT_CHANGES_PER_CRM = 5
#: the account signals a day's edits touch (canonical columns; the CRM fields come from the mapping)
SIGNALS = ("logins_per_user_week", "qbrs_missed", "days_payment_late", "csm_sentiment")
_ACCOUNT_OBJECT = {"salesforce": "Account", "hubspot": "companies"}


@dataclass(frozen=True)
class AccountChange:
    """One account edited in the sandbox: which, how (`slipped` or `recovered`) and the new values."""

    crm: str
    record_id: str
    name: str
    direction: str  # slipped | recovered
    values: dict  # canonical column -> new value

    def describe(self) -> str:
        return f"{self.crm} {self.name}: {self.direction}"


def _account_value(record: dict, crm: str, field: str):
    return record.get(field) if crm == "salesforce" else record["properties"].get(field)


def _number(value, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _new_values(record: dict, crm: str, fields: dict[str, str], slipped: bool) -> dict:
    """The canonical signal values after the day's change (from the record's current values)."""
    logins = _number(_account_value(record, crm, fields["logins_per_user_week"]), 2.0)
    qbrs = int(_number(_account_value(record, crm, fields["qbrs_missed"]), 0))
    late = int(_number(_account_value(record, crm, fields["days_payment_late"]), 0))
    if slipped:
        return {"logins_per_user_week": round(logins * 0.3, 1), "qbrs_missed": min(qbrs + 1, 3),
                "days_payment_late": late + 35, "csm_sentiment": "red"}
    return {"logins_per_user_week": round(max(logins * 2.5, 5.0), 1), "qbrs_missed": 0,
            "days_payment_late": 0, "csm_sentiment": "green"}


def _crm_values(values: dict, crm: str, fields: dict[str, str]) -> dict:
    """Canonical values -> the CRM's fields and spelling (HubSpot properties are strings)."""
    out = {}
    for column, value in values.items():
        if crm == "hubspot":
            value = str(value) if not isinstance(value, float) or not value.is_integer() else str(int(value))
        out[fields[column]] = value
    return out


def change_accounts(sandbox, day: int, per_crm: int = DEFAULT_CHANGES_PER_CRM) -> list[AccountChange]:
    """Edit `per_crm` live accounts in each CRM for demo day `day`; returns what was changed."""
    read_maps = mapping()
    changes: list[AccountChange] = []
    for crm, obj in _ACCOUNT_OBJECT.items():
        fields = read_maps[crm]["account"]["read"]
        key = "Id" if crm == "salesforce" else "id"
        alive = [r for r in sandbox.records(crm, obj) if not (r.get("IsDeleted") or r.get("archived"))]
        alive.sort(key=lambda r: r[key])
        if not alive:
            continue
        rng = np.random.default_rng([sandbox.seed, day, 0 if crm == "salesforce" else 1])
        picked = rng.choice(len(alive), size=min(per_crm, len(alive)), replace=False)
        for i, index in enumerate(sorted(picked.tolist())):
            record = alive[index]
            slipped = i % 2 == 0
            values = _new_values(record, crm, fields, slipped)
            sandbox.modify(crm, obj, record[key], _crm_values(values, crm, fields))
            name = _account_value(record, crm, fields["name"]) or record[key]
            changes.append(AccountChange(crm, record[key], str(name), "slipped" if slipped else "recovered", values))
    return changes
