"""The Salesforce fields healthsync writes: ONE definition for `crm setup`, the sandbox and the write-back.

`crm setup` creates these fields through the Tooling API, the sandbox pre-creates the same
ones (`precreate_fields=True`), and the write-back's valid ranges follow their precision, so
the emulator can never hold a field of another type than a real org gets (issue 12 item 8:
the sandbox used to pre-create Percent(5,1) and LongTextArea where setup made Number(5,4) and
Text(255)).

Field names come from the mapping (`mapping.salesforce.account.write`, `.opportunity.write`,
`.task.key_field`); the types come from the healthsync output they hold. Value conventions are
in sync/writeback.py (score 0-100 one decimal, confidence 0-1 three decimals, adjusted
probability a 0-1 fraction with four decimals, drivers at most 255 characters).

Custom fields of Task (and Event) live on the Activity object: they are created with the
FullName `Activity.<Field>` and appear on Task; their field-level security is granted on
`Task.<Field>` (public source in connectors/sandbox/BEHAVIOR.md).
"""

from __future__ import annotations

from dataclasses import dataclass

#: healthsync output -> Tooling API CustomField Metadata (without the label)
OUTPUT_METADATA: dict[str, dict] = {
    "score": {"type": "Number", "precision": 5, "scale": 1},
    "band": {"type": "Text", "length": 40},
    "trend": {"type": "Text", "length": 40},
    "drivers": {"type": "Text", "length": 255},
    "confidence": {"type": "Number", "precision": 4, "scale": 3},
    "updated": {"type": "DateTime"},
    "adjusted_probability": {"type": "Number", "precision": 5, "scale": 4},
    "expected_arr": {"type": "Currency", "precision": 16, "scale": 2},
}
#: an output the table does not know (a user-added mapping entry) is written as text
FALLBACK_METADATA = {"type": "Text", "length": 255}
#: the task idempotency key: unique external id, so Salesforce itself refuses a duplicate
TASK_KEY_METADATA = {"type": "Text", "length": 255, "externalId": True, "unique": True}

#: sObjects whose custom fields are created on Activity (Tooling FullName `Activity.X__c`)
ACTIVITY_OBJECTS = ("Task", "Event")


@dataclass(frozen=True)
class HealthsyncField:
    """One healthsync field: where it lives, what it holds, and its Tooling Metadata."""

    sobject: str  # the object records are read/written on (Account, Opportunity, Task)
    name: str  # API name, e.g. Health_Score__c
    output: str  # the healthsync output (score, band, ...) or "task_key"
    metadata: dict

    @property
    def full_name(self) -> str:
        """The Tooling API FullName (`Activity.X__c` for Task fields)."""
        owner = "Activity" if self.sobject in ACTIVITY_OBJECTS else self.sobject
        return f"{owner}.{self.name}"

    @property
    def permission_name(self) -> str:
        """`FieldPermissions.Field`: the sObject the user reads it on, then the field."""
        return f"{self.sobject}.{self.name}"

    def integer_digits(self) -> int | None:
        """Digits allowed left of the decimal point (None for non-numbers)."""
        if "precision" not in self.metadata:
            return None
        return int(self.metadata["precision"]) - int(self.metadata.get("scale", 0))


def _label(name: str) -> str:
    return name.removesuffix("__c").replace("_", " ")


def healthsync_fields(mapping: dict) -> list[HealthsyncField]:
    """Every field healthsync writes, from `mapping.salesforce` (a plain dict)."""
    out: list[HealthsyncField] = []
    for section in ("account", "opportunity"):
        sec = mapping.get(section) or {}
        sobject = sec.get("object") or {"account": "Account", "opportunity": "Opportunity"}[section]
        for output, name in (sec.get("write") or {}).items():
            meta = {**OUTPUT_METADATA.get(output, FALLBACK_METADATA), "label": _label(name)}
            out.append(HealthsyncField(sobject, name, output, meta))
    task = mapping.get("task") or {}
    key = task.get("key_field") or "Healthsync_Key__c"
    out.append(HealthsyncField(task.get("object") or "Task", key, "task_key", {**TASK_KEY_METADATA, "label": _label(key)}))
    return out


def max_abs_value(output: str) -> float | None:
    """The largest magnitude a numeric output's field holds (10**integer digits, exclusive)."""
    meta = OUTPUT_METADATA.get(output) or {}
    if "precision" not in meta:
        return None
    return 10.0 ** (int(meta["precision"]) - int(meta.get("scale", 0)))
