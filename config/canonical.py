"""The canonical data contract: the frames every connector produces and the engine consumes.

Column names are public (design.md, "Canonical data"): `healthsync score` and
`healthsync backtest` read them from CSV or Parquet, and the CRM field mapping
in config maps them to CRM fields. This module lives in `config/` because both
`connectors/` and `engine/` depend on it and neither may import the other.

`validate_frame` never raises on bad records: one bad row must not stop a run.
It returns the rows that can be used, coerced to the contract's dtypes, plus a
`ValidationReport` naming every record that was dropped or had a value removed
and why. Columns the contract does not know pass through untouched (custom
signals, product-usage columns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Column:
    """One column of a canonical frame.

    kind: "str", "float", "int", "date", "datetime", "bool", "enum", "label" (a 0/1 outcome written
    0/1, true/false, yes/no or y/n in any case; read as 0/1).
    required: the frame is unusable without the column (only ids and a few keys).
    nullable: a missing value is allowed (the metric is absent, never zero).
    """

    name: str
    kind: str
    required: bool = False
    nullable: bool = True
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""


@dataclass(frozen=True)
class FrameSpec:
    name: str
    key: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


SEGMENTS = ("enterprise", "mid_market", "smb")
EXEC_SPONSOR = ("active", "partial", "none")
SENTIMENT = ("green", "yellow", "red")
OPPORTUNITY_TYPES = ("new_business", "renewal", "expansion")
PRIORITIES = ("P1", "P2", "P3", "P4")
TICKET_STATUS = ("open", "closed")
TASK_STATUS = ("open", "completed")

ACCOUNTS = FrameSpec(
    "accounts",
    "account_id",
    (
        Column("account_id", "str", required=True, nullable=False, doc="e.g. sf:001..., hs:1234"),
        Column("name", "str"),
        Column("segment", "str", doc="enterprise, mid_market, smb; anything else uses the default model"),
        Column("arr", "float", minimum=0, doc="annual recurring revenue"),
        Column("seats_purchased", "int", minimum=0),
        Column("active_users_30d", "int", minimum=0),
        Column("logins_per_user_week", "float", minimum=0, doc="trailing 30 days"),
        Column("features_used", "int", minimum=0),
        Column("features_available", "int", minimum=0),
        Column("qbrs_missed", "int", minimum=0, doc="consecutive QBRs missed"),
        Column("email_response_hours", "float", minimum=0, doc="trailing 90 days"),
        Column("exec_sponsor", "enum", choices=EXEC_SPONSOR),
        Column("days_payment_late", "int", minimum=0, doc="worst lateness in trailing 180 days"),
        Column("nps", "float", minimum=0, maximum=10),
        Column("csm_sentiment", "enum", choices=SENTIMENT, doc="the CSM override input"),
        Column("customer_since", "date"),
        Column("renewal_date", "date"),
        Column("owner_email", "str"),
        Column("product_account_id", "str", doc="the product's own account id: the warehouse account_key"),
    ),
)

OPPORTUNITIES = FrameSpec(
    "opportunities",
    "opportunity_id",
    (
        Column("opportunity_id", "str", required=True, nullable=False),
        Column("account_id", "str", required=True, nullable=False),
        Column("name", "str"),
        Column("stage", "str"),
        Column("amount", "float", minimum=0),
        Column("probability", "float", minimum=0, maximum=1),
        Column("close_date", "date"),
        Column("type", "enum", choices=OPPORTUNITY_TYPES),
        Column("forecast_category", "str"),
        Column("is_closed", "bool"),
        Column("is_won", "bool"),
        Column("owner_email", "str"),
    ),
)

TICKETS = FrameSpec(
    "tickets",
    "ticket_id",
    (
        Column("ticket_id", "str", required=True, nullable=False),
        Column("account_id", "str", required=True, nullable=False),
        Column("priority", "enum", choices=PRIORITIES),
        Column("status", "enum", choices=TICKET_STATUS),
        Column("created_at", "datetime"),
        Column("closed_at", "datetime"),
        Column("escalated", "bool"),
    ),
)

TASKS = FrameSpec(
    "tasks",
    "task_id",
    (
        Column("task_id", "str", required=True, nullable=False),
        Column("account_id", "str", required=True, nullable=False),
        Column("playbook", "str"),
        Column("status", "enum", choices=TASK_STATUS),
        Column("created_at", "datetime"),
        Column("due_at", "datetime"),
        Column("completed_at", "datetime"),
    ),
)

#: History snapshots: the accounts columns plus these (design.md, "history for validation"). An optional
#: `churned_at` (the day the account left; lead times use it when given) passes through like a custom column.
ACCOUNTS_HISTORY_EXTRA = (
    Column("as_of", "date", required=True, nullable=False),
    Column("churned", "label", required=True, nullable=False, doc="did not renew within the horizon after as_of"),
)
OPPORTUNITIES_HISTORY_EXTRA = (
    Column("as_of", "date", required=True, nullable=False),
    Column("won", "label"),
    Column("won_amount", "float", minimum=0),
)

ACCOUNTS_HISTORY = FrameSpec("accounts_history", "account_id", ACCOUNTS.columns + ACCOUNTS_HISTORY_EXTRA)
OPPORTUNITIES_HISTORY = FrameSpec(
    "opportunities_history", "opportunity_id", OPPORTUNITIES.columns + OPPORTUNITIES_HISTORY_EXTRA
)

SPECS: dict[str, FrameSpec] = {
    s.name: s for s in (ACCOUNTS, OPPORTUNITIES, TICKETS, TASKS, ACCOUNTS_HISTORY, OPPORTUNITIES_HISTORY)
}


@dataclass
class Problem:
    """One record-level problem: which frame, which record, which column, what is wrong."""

    frame: str
    record_id: str
    column: str
    message: str
    dropped: bool  # True: the record was removed; False: only the value was cleared

    def __str__(self) -> str:
        action = "record skipped" if self.dropped else "value ignored"
        return f"{self.frame} {self.record_id!s}: {self.column}: {self.message} ({action})"


@dataclass
class ValidationReport:
    problems: list[Problem] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        self.problems.append(Problem(*args, **kwargs))

    def extend(self, other: "ValidationReport") -> None:
        self.problems.extend(other.problems)

    @property
    def dropped_ids(self) -> set[str]:
        return {p.record_id for p in self.problems if p.dropped}

    def __bool__(self) -> bool:  # truthy when there is something to report
        return bool(self.problems)

    def __len__(self) -> int:
        return len(self.problems)

    def lines(self, limit: int | None = None) -> list[str]:
        rows = [str(p) for p in self.problems]
        return rows if limit is None else rows[:limit]


def empty_frame(spec: FrameSpec) -> pd.DataFrame:
    """A frame with the contract's columns and dtypes and no rows."""
    return coerce_dtypes(pd.DataFrame({c.name: pd.Series([], dtype=object) for c in spec.columns}), spec)


def _ids(frame: pd.DataFrame, key: str, mask: pd.Series) -> list[str]:
    if key in frame.columns:
        return [str(v) if not _isna(v) else f"row {i}" for i, v in zip(frame.index[mask], frame.loc[mask, key])]
    return [f"row {i}" for i in frame.index[mask]]


def _isna(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


def _to_bool(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Map common boolean spellings; returns (values as nullable boolean, mask of unparsable)."""
    if series.dtype == bool:
        return series.astype("boolean"), pd.Series(False, index=series.index)
    text = series.astype("string").str.strip().str.lower()
    out = pd.Series(pd.NA, index=series.index, dtype="boolean")
    out[text.isin(_TRUE).fillna(False).astype(bool)] = True
    out[text.isin(_FALSE - {""}).fillna(False).astype(bool)] = False
    bad = series.notna() & out.isna() & (text.fillna("") != "")
    return out, bad


def _to_label(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """0/1 outcome labels (Int64): numbers 0 and 1, or the boolean spellings of `_to_bool`; (values, unparsable)."""
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        num = series.astype("Float64")
        bad = num.notna() & ~num.isin([0, 1]).fillna(False).astype(bool)
        return num.mask(bad).astype("Int64"), bad
    values, bad = _to_bool(series)
    return values.astype("Int64"), bad


def coerce_dtypes(frame: pd.DataFrame, spec: FrameSpec) -> pd.DataFrame:
    """Coerce known columns to the contract's dtypes without validating (fast path)."""
    out = frame.copy()
    for c in spec.columns:
        if c.name not in out.columns:
            continue
        s = out[c.name]
        if c.kind in ("str", "enum"):
            out[c.name] = s.astype("string")
        elif c.kind == "float":
            out[c.name] = pd.to_numeric(s, errors="coerce").astype("float64")
        elif c.kind == "int":
            out[c.name] = pd.to_numeric(s, errors="coerce").astype("Int64")
        elif c.kind in ("date", "datetime"):
            out[c.name] = pd.to_datetime(s, errors="coerce", utc=True).dt.tz_localize(None)
            if c.kind == "date":
                out[c.name] = out[c.name].dt.normalize()
        elif c.kind == "bool":
            out[c.name] = _to_bool(s)[0]
        elif c.kind == "label":
            out[c.name] = _to_label(s)[0]
    return out


def validate_frame(frame: pd.DataFrame, spec: FrameSpec | str) -> tuple[pd.DataFrame, ValidationReport]:
    """Coerce `frame` to the contract and collect per-record problems instead of raising.

    - missing or duplicate id: the record is skipped (for duplicates, every copy,
      since there is no way to know which one is right);
    - a required column absent from the whole frame: every record is skipped,
      with one problem naming the column;
    - unparsable number/date, out-of-range value, unknown enum: the value is
      cleared (the metric is then absent, never zero) and reported.
    """
    if isinstance(spec, str):
        spec = SPECS[spec]
    report = ValidationReport()
    out = frame.copy()
    if out.index.has_duplicates or not out.index.is_unique:
        out = out.reset_index(drop=True)

    for c in spec.columns:
        if c.required and c.name not in out.columns:
            report.add(spec.name, "*", c.name, "required column is missing", True)
            return empty_frame(spec), report

    drop = pd.Series(False, index=out.index)
    for c in spec.columns:
        if c.name not in out.columns:
            continue
        raw = out[c.name]
        present = raw.notna() & (raw.astype("string").str.strip() != "").fillna(False).astype(bool)
        if c.kind in ("str", "enum"):
            values = raw.astype("string").str.strip()
            values = values.where(present, pd.NA)
            if c.kind == "enum":
                lowered = values.str.lower()
                unknown = present & ~lowered.isin([v.lower() for v in c.choices]).fillna(False).astype(bool)
                for rid, v in zip(_ids(out, spec.key, unknown), values[unknown]):
                    report.add(spec.name, rid, c.name, f"unknown value {v!r} (expected one of {', '.join(c.choices)})", False)
                values = lowered.where(~unknown, pd.NA)
                if c.name == "priority":
                    values = values.str.upper()
            out[c.name] = values
        elif c.kind in ("float", "int"):
            num = pd.to_numeric(raw.where(present), errors="coerce")
            bad = present & num.isna()
            for rid, v in zip(_ids(out, spec.key, bad), raw[bad]):
                report.add(spec.name, rid, c.name, f"not a number: {v!r}", False)
            if c.minimum is not None:
                low = num < c.minimum
                for rid, v in zip(_ids(out, spec.key, low), num[low]):
                    report.add(spec.name, rid, c.name, f"{v:g} is below the minimum {c.minimum:g}", False)
                num = num.mask(low)
            if c.maximum is not None:
                high = num > c.maximum
                for rid, v in zip(_ids(out, spec.key, high), num[high]):
                    report.add(spec.name, rid, c.name, f"{v:g} is above the maximum {c.maximum:g}", False)
                num = num.mask(high)
            if c.kind == "int":
                frac = num.notna() & (num != np.floor(num))
                for rid, v in zip(_ids(out, spec.key, frac), num[frac]):
                    report.add(spec.name, rid, c.name, f"{v:g} is not a whole number", False)
                num = num.mask(frac).astype("Int64")
            out[c.name] = num
        elif c.kind in ("date", "datetime"):
            parsed = pd.to_datetime(raw.where(present), errors="coerce", utc=True, format="mixed")
            bad = present & parsed.isna()
            for rid, v in zip(_ids(out, spec.key, bad), raw[bad]):
                report.add(spec.name, rid, c.name, f"unparsable date {v!r}", False)
            parsed = parsed.dt.tz_localize(None)
            out[c.name] = parsed.dt.normalize() if c.kind == "date" else parsed
        elif c.kind == "bool":
            values, bad = _to_bool(raw.where(present))
            for rid, v in zip(_ids(out, spec.key, bad), raw[bad]):
                report.add(spec.name, rid, c.name, f"not a boolean: {v!r}", False)
            out[c.name] = values
        elif c.kind == "label":
            values, bad = _to_label(raw.where(present))
            drop_bad = bad & (not c.nullable)  # an unreadable required outcome: the record cannot be used
            for rid, v, dropped in zip(_ids(out, spec.key, bad), raw[bad], drop_bad[bad]):
                report.add(spec.name, rid, c.name, f"not an outcome label: {v!r} (use 0/1, true/false, yes/no or y/n)",
                           bool(dropped))
            drop |= drop_bad
            out[c.name] = values.mask(bad)
        if not c.nullable:
            missing = out[c.name].isna()
            if c.kind == "label":  # unreadable labels were reported (and dropped) above
                missing &= ~bad
            for rid in _ids(out, spec.key, missing):
                report.add(spec.name, rid, c.name, "missing", True)
            drop |= missing

    key = out[spec.key]
    dup = key.notna() & key.duplicated(keep=False) & ~drop
    if spec.name in ("accounts_history", "opportunities_history") and "as_of" in out.columns:
        dup = key.notna() & out.duplicated([spec.key, "as_of"], keep=False) & ~drop
    for rid in sorted(set(_ids(out, spec.key, dup))):
        report.add(spec.name, rid, spec.key, "duplicate id", True)
    drop |= dup
    return out.loc[~drop].reset_index(drop=True), report


def canonical_columns(spec: FrameSpec | str, frame: pd.DataFrame | None = None) -> list[str]:
    """The contract's columns, then any extra (custom) columns present in `frame`, in order."""
    if isinstance(spec, str):
        spec = SPECS[spec]
    names = spec.names
    if frame is None:
        return names
    return [n for n in names if n in frame.columns] + [c for c in frame.columns if c not in names]


def missing_columns(frame: pd.DataFrame, spec: FrameSpec | str) -> list[str]:
    if isinstance(spec, str):
        spec = SPECS[spec]
    return [n for n in spec.names if n not in frame.columns]


def as_records(frame: pd.DataFrame, columns: Iterable[str] | None = None) -> list[dict]:
    """JSON-friendly records (NaN/NA -> None, timestamps -> ISO strings)."""
    sub = frame if columns is None else frame[list(columns)]
    out = sub.astype(object).where(sub.notna(), None)
    records = out.to_dict("records")
    for r in records:
        for k, v in r.items():
            if isinstance(v, pd.Timestamp):
                r[k] = v.isoformat()
    return records
