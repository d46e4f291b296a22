"""How canonical enum values are spelled in each CRM.

One table shared by the sandbox (which seeds CRM records from canonical demo
data) and the connectors (which read CRM records back into canonical frames),
so the two can never drift apart. Values a CRM holds that are not in a table
are reported as record problems by the canonical validator, never guessed.
"""

from __future__ import annotations

SALESFORCE = {
    # Case.Priority picklist
    "priority": {"P1": "Critical", "P2": "High", "P3": "Medium", "P4": "Low"},
    # Case.Status: anything closed is "Closed"; open cases are "New" or "Working"
    "ticket_status": {"open": "New", "closed": "Closed"},
    # Opportunity.Type picklist
    "opportunity_type": {"new_business": "New Business", "renewal": "Renewal", "expansion": "Existing Business"},
    # Task.Status / Task.Priority
    "task_status": {"open": "Not Started", "completed": "Completed"},
    "task_priority": {"high": "High", "normal": "Normal", "low": "Low"},
}

HUBSPOT = {
    "priority": {"P1": "URGENT", "P2": "HIGH", "P3": "MEDIUM", "P4": "LOW"},
    # default ticket pipeline stages: 1 new, 2 waiting on contact, 3 waiting on us, 4 closed
    "ticket_status": {"open": "1", "closed": "4"},
    "opportunity_type": {"new_business": "newbusiness", "renewal": "renewal", "expansion": "existingbusiness"},
    "task_status": {"open": "NOT_STARTED", "completed": "COMPLETED"},
    "task_priority": {"high": "HIGH", "normal": "MEDIUM", "low": "LOW"},
}

#: Extra CRM spellings accepted when reading (CRM -> canonical), beyond the inverse of the tables.
SALESFORCE_READ_ALIASES = {
    "ticket_status": {"Working": "open", "Escalated": "open", "On Hold": "open"},
}
HUBSPOT_READ_ALIASES = {
    "ticket_status": {"2": "open", "3": "open"},
}


def to_crm(table: dict, kind: str, value):
    """Canonical value -> CRM spelling (None stays None)."""
    if value is None:
        return None
    return table[kind].get(value, value)


def reverse(table: dict, kind: str, aliases: dict | None = None) -> dict:
    """CRM spelling -> canonical value, for vectorised `Series.map`."""
    out = {v: k for k, v in table[kind].items()}
    if aliases and kind in aliases:
        out.update(aliases[kind])
    return out
