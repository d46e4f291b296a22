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

The contract itself (the specs) is plain Python: this module imports pandas and the
column checks (config/column_values.py) only inside the functions that need them, so
`healthsync score --input` can plan which files and columns to read, and start decoding
them, while pandas is still loading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
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
    """One record-level problem: which frame, which record, which column, what is wrong.

    `rows` are the record's positions in the frame that was validated; a file reader turns
    them into `file` and `lines` (CSV lines, or Parquet rows when `line_label` is "row") so
    a record without an id is still named. `no_id`: the record has no id to name it by.
    """

    frame: str
    record_id: str
    column: str
    message: str
    dropped: bool  # True: the record was removed; False: only the value was cleared
    rows: tuple[int, ...] = ()
    file: str | None = None
    lines: tuple[int, ...] = ()
    line_label: str = "line"
    no_id: bool = False

    @property
    def location(self) -> str:
        """`accounts.csv line 7`, `tickets.parquet rows 3, 9`, or "" when not read from a file."""
        if not self.file:
            return ""
        if not self.lines:
            return self.file
        label = self.line_label + ("s" if len(self.lines) > 1 else "")
        shown = ", ".join(str(n) for n in self.lines[:5]) + (", ..." if len(self.lines) > 5 else "")
        return f"{self.file} {label} {shown}"

    def __str__(self) -> str:
        action = "record skipped" if self.dropped else "value ignored"
        text = f"{self.frame} {self.record_id!s}: {self.column}: {self.message} ({action})"
        if self.file:
            who = "(no id)" if self.no_id else self.record_id
            return f"{self.location}: {self.frame} {who}: {self.column}: {self.message} ({action})"
        return text


@dataclass
class ValidationReport:
    """Record problems (the record or value was not used: exit code 1) and warnings (nothing
    was wrong with a record, but the user should know: a file with 0 records, a column the
    model reads that is absent)."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        self.problems.append(Problem(*args, **kwargs))

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def extend(self, other: "ValidationReport") -> None:
        self.problems.extend(other.problems)
        for w in other.warnings:
            self.warn(w)

    @property
    def dropped_ids(self) -> set[str]:
        return {p.record_id for p in self.problems if p.dropped}

    def __bool__(self) -> bool:  # truthy when a record had a problem (warnings alone are not)
        return bool(self.problems)

    def __len__(self) -> int:
        return len(self.problems)

    def lines(self, limit: int | None = None) -> list[str]:
        rows = [str(p) for p in self.problems]
        return rows if limit is None else rows[:limit]


def empty_frame(spec: FrameSpec) -> pd.DataFrame:
    """A frame with the contract's columns and dtypes and no rows."""
    import pandas as pd

    return coerce_dtypes(pd.DataFrame({c.name: pd.Series([], dtype=object) for c in spec.columns}), spec)


def _isna(v) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


def _to_bool(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Map common boolean spellings; returns (values as nullable boolean, mask of unparsable)."""
    import pandas as pd

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
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        num = series.astype("Float64")
        bad = num.notna() & ~num.isin([0, 1]).fillna(False).astype(bool)
        return num.mask(bad).astype("Int64"), bad
    values, bad = _to_bool(series)
    return values.astype("Int64"), bad


def coerce_dtypes(frame: pd.DataFrame, spec: FrameSpec) -> pd.DataFrame:
    """Coerce known columns to the contract's dtypes without validating (fast path)."""
    import pandas as pd

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


def check_column(raw: pd.Series, c: Column) -> tuple[object, list]:
    """One column's values coerced to the contract, and the issues found (config/column_values.py)."""
    from healthsync.config import column_values

    if c.kind == "str":
        return column_values.text_values(raw), []
    if c.kind == "enum":
        return column_values.enum_values(raw, c.choices, upper=c.name == "priority")
    if c.kind in ("float", "int"):
        return column_values.number_values(raw, c.kind, c.minimum, c.maximum)
    if c.kind in ("date", "datetime"):
        return column_values.date_values(raw, c.kind)
    if c.kind == "bool":
        return column_values.bool_values(raw)
    if c.kind == "label":
        return column_values.label_values(raw)
    raise ValueError(f"unknown column kind {c.kind!r}")  # pragma: no cover - the specs above are fixed


def _as_array(values) -> object:
    """Positional values for a column assignment (no index alignment)."""
    import pandas as pd

    return values.array if isinstance(values, pd.Series) else values


def validate_frame(frame: pd.DataFrame, spec: FrameSpec | str) -> tuple[pd.DataFrame, ValidationReport]:
    """Coerce `frame` to the contract and collect per-record problems instead of raising.

    - missing or duplicate id: the record is skipped (for duplicates, every copy,
      since there is no way to know which one is right);
    - a required column absent from the whole frame: every record is skipped,
      with one problem naming the column;
    - unparsable, infinite or out-of-range number, unparsable date, unknown enum: the
      value is cleared (the metric is then absent, never zero) and reported.

    Values are checked on their own types (config/column_values.py): typed columns are
    never turned into text. Each problem carries the record's row position in `frame`.
    """
    import numpy as np
    import pandas as pd

    from healthsync.config import column_values

    if isinstance(spec, str):
        spec = SPECS[spec]
    report = ValidationReport()
    for c in spec.columns:
        if c.required and c.name not in frame.columns:
            report.add(spec.name, "*", c.name, "required column is missing", True)
            return empty_frame(spec), report

    n = len(frame)
    checked: dict[str, object] = {}
    key = column_values.text_values(frame[spec.key])
    key_text = key.array
    key_missing = key.isna().to_numpy(dtype=bool)

    def ids(rows: np.ndarray) -> list[tuple[str, bool]]:
        values = key_text[rows]
        return [(f"row {r}", True) if m else (str(v), False) for r, v, m in zip(rows, values, key_missing[rows])]

    def add(rows: np.ndarray, column: str, messages: list[str], dropped: bool) -> None:
        for r, (rid, no_id), message in zip(rows, ids(rows), messages):
            report.add(spec.name, rid, column, message, dropped, rows=(int(r),), no_id=no_id)

    drop = np.zeros(n, dtype=bool)
    for c in spec.columns:
        if c.name not in frame.columns:
            continue
        if c.name == spec.key:
            values, issues = key, []
        else:
            values, issues = check_column(frame[c.name], c)
        # an unreadable required outcome label: the record cannot be used, and one problem says why
        drops_record = c.kind == "label" and not c.nullable
        reported = np.zeros(n, dtype=bool)
        for rows, messages in issues:
            add(rows, c.name, messages, drops_record)
            if drops_record:
                drop[rows] = reported[rows] = True
        checked[c.name] = values
        if not c.nullable:
            missing = np.flatnonzero(np.asarray(pd.isna(values), dtype=bool) & ~reported)
            add(missing, c.name, ["missing"] * len(missing), True)
            drop[missing] = True

    if spec.name in ("accounts_history", "opportunities_history") and "as_of" in checked:
        both = pd.DataFrame({"key": key_text, "as_of": _as_array(checked["as_of"])})
        dup = ~key_missing & both.duplicated(keep=False).to_numpy(dtype=bool)
    else:
        dup = column_values.duplicated(key)
    dup = dup & ~drop
    if dup.any():
        rows = np.flatnonzero(dup)
        by_id: dict[str, list[int]] = {}
        for r, v in zip(rows, key_text[rows]):
            by_id.setdefault(str(v), []).append(int(r))
        for rid in sorted(by_id):
            report.add(spec.name, rid, spec.key, "duplicate id", True, rows=tuple(by_id[rid]))
        drop |= dup

    if frame.columns.is_unique:  # one new frame from the columns, not one insertion (and copy) per column
        out = pd.DataFrame(
            {name: _as_array(checked[name]) if name in checked else frame[name].array for name in frame.columns},
            copy=False,
        )
    else:
        out = frame.reset_index(drop=True)
        for name, values in checked.items():
            out[name] = _as_array(values)
    if drop.any():
        out = out.iloc[np.flatnonzero(~drop)]
    return out.reset_index(drop=True), report


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
    import pandas as pd

    sub = frame if columns is None else frame[list(columns)]
    out = sub.astype(object).where(sub.notna(), None)
    records = out.to_dict("records")
    for r in records:
        for k, v in r.items():
            if isinstance(v, pd.Timestamp):
                r[k] = v.isoformat()
    return records
