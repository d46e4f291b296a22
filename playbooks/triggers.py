"""Playbook trigger conditions: a tiny declarative language, evaluated over the whole scores frame.

A condition is a mapping with exactly one key:

    {all: [c, ...]}   every child holds
    {any: [c, ...]}   at least one child holds
    {not: c}          the child does not hold
    {<column>_<op>: value}   op in lt, lte, gt, gte, eq, ne, in, not_in

e.g. `{any: [{band_in: [Red]}, {score_lt: 50}]}`. Columns are those of the scores
frame the sync run hands to playbooks, plus `days_to_renewal` (derived from
`renewal_date` and `now`). Parsing happens once at load time, so a typo names the
playbook and the key path (`playbooks.renewal_risk.condition.all.1.scor_lt`) before
any CRM is touched.

Evaluation is vectorised with pandas' nullable booleans (Kleene logic): a missing
value makes a comparison unknown, `not` keeps it unknown, and an unknown result
never opens an episode. So an account with no score is not "not at risk"; it is
simply not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Union

import pandas as pd

#: columns a condition may compare, by kind
NUMERIC_COLUMNS = frozenset(
    {"score", "previous_score", "confidence", "delta_30d", "delta_90d", "arr", "days_to_renewal", "days_in_band"}
)
TEXT_COLUMNS = frozenset({"band", "previous_band", "raw_band", "momentum", "segment", "lifecycle_stage"})
COLUMNS = NUMERIC_COLUMNS | TEXT_COLUMNS

#: longest suffix first so `band_not_in` is not read as `band_not` + `in`
OPERATORS = ("not_in", "lte", "gte", "in", "lt", "gt", "eq", "ne")
NUMERIC_ONLY = frozenset({"lt", "lte", "gt", "gte"})


class ConditionError(ValueError):
    """A condition is malformed; the message starts with its key path."""


@dataclass(frozen=True)
class Compare:
    column: str
    op: str
    value: Any


@dataclass(frozen=True)
class All:
    children: tuple["Condition", ...]


@dataclass(frozen=True)
class AnyOf:
    children: tuple["Condition", ...]


@dataclass(frozen=True)
class Not:
    child: "Condition"


Condition = Union[Compare, All, AnyOf, Not]


def parse_condition(raw: Any, path: str) -> Condition:
    """Parse the YAML form into a condition tree; errors start with `path`."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConditionError(
            f"{path}: a condition is a mapping with exactly one key (all, any, not or <column>_<op>), got {raw!r}"
        )
    ((key, value),) = raw.items()
    key = str(key)
    if key in ("all", "any"):
        if not isinstance(value, list) or not value:
            raise ConditionError(f"{path}.{key}: expected a non-empty list of conditions")
        children = tuple(parse_condition(c, f"{path}.{key}.{i}") for i, c in enumerate(value))
        return All(children) if key == "all" else AnyOf(children)
    if key == "not":
        return Not(parse_condition(value, f"{path}.not"))
    return _parse_compare(key, value, f"{path}.{key}")


def _parse_compare(key: str, value: Any, path: str) -> Compare:
    for op in OPERATORS:
        suffix = "_" + op
        if key.endswith(suffix) and len(key) > len(suffix):
            column = key[: -len(suffix)]
            break
    else:
        raise ConditionError(f"{path}: unknown condition; expected all, any, not or <column>_<op> with op in {', '.join(OPERATORS)}")
    if column not in COLUMNS:
        raise ConditionError(f"{path}: unknown column {column!r} (known: {', '.join(sorted(COLUMNS))})")
    numeric = column in NUMERIC_COLUMNS
    if op in NUMERIC_ONLY and not numeric:
        raise ConditionError(f"{path}: {op} needs a numeric column; {column} is text (use eq, ne, in, not_in)")
    values = value if op in ("in", "not_in") else [value]
    if op in ("in", "not_in") and (not isinstance(value, list) or not value):
        raise ConditionError(f"{path}: expected a non-empty list of values")
    for v in values:
        if numeric and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ConditionError(f"{path}: expected a number, got {v!r}")
        if not numeric and not isinstance(v, str):
            raise ConditionError(f"{path}: expected text, got {v!r}")
    return Compare(column, op, tuple(values) if op in ("in", "not_in") else value)


def columns_used(condition: Condition) -> set[str]:
    if isinstance(condition, Compare):
        return {condition.column}
    if isinstance(condition, Not):
        return columns_used(condition.child)
    return set().union(*(columns_used(c) for c in condition.children))


def days_to_renewal(renewal_date: pd.Series, now: datetime) -> pd.Series:
    """Whole days from `now`'s date to the renewal date (negative once passed; NA when unknown)."""
    dates = pd.to_datetime(renewal_date, errors="coerce", utc=True).dt.tz_localize(None).dt.normalize()
    today = pd.Timestamp(now).tz_localize(None) if pd.Timestamp(now).tzinfo is None else pd.Timestamp(now).tz_convert("UTC").tz_localize(None)
    return (dates - today.normalize()).dt.days.astype("Int64")


def prepare_frame(scores: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """The scores frame plus the derived columns conditions may use."""
    frame = scores.copy()
    if "renewal_date" in frame.columns:
        frame["days_to_renewal"] = days_to_renewal(frame["renewal_date"], now)
    return frame


def evaluate(condition: Condition, frame: pd.DataFrame) -> pd.Series:
    """Nullable boolean per row (True / False / NA); call `prepare_frame` first."""
    if isinstance(condition, All):
        out = pd.Series(True, index=frame.index, dtype="boolean")
        for c in condition.children:
            out = out & evaluate(c, frame)
        return out
    if isinstance(condition, AnyOf):
        out = pd.Series(False, index=frame.index, dtype="boolean")
        for c in condition.children:
            out = out | evaluate(c, frame)
        return out
    if isinstance(condition, Not):
        return ~evaluate(condition.child, frame)
    return _compare(condition, frame)


def _compare(c: Compare, frame: pd.DataFrame) -> pd.Series:
    if c.column not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="boolean")
    if c.column in NUMERIC_COLUMNS:
        values = pd.to_numeric(frame[c.column], errors="coerce").astype("Float64")
    else:
        values = frame[c.column].astype("string")
    if c.op == "lt":
        out = values < c.value
    elif c.op == "lte":
        out = values <= c.value
    elif c.op == "gt":
        out = values > c.value
    elif c.op == "gte":
        out = values >= c.value
    elif c.op == "eq":
        out = values == c.value
    elif c.op == "ne":
        out = values != c.value
    else:
        member = values.isin(list(c.value)).astype("boolean")
        out = member if c.op == "in" else ~member
    out = out.astype("boolean")
    return out.mask(values.isna(), pd.NA)


def holds(condition: Condition, frame: pd.DataFrame) -> pd.Series:
    """Plain bool per row: True only where the condition is known to hold."""
    return evaluate(condition, frame).fillna(False).astype(bool)
