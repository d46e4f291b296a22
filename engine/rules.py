"""Metric rules: turn one metric's raw value(s) into a 0-100 metric score, vectorised.

Each rule type of `config.model` (steps, linear, ratio, category, boolean,
identity, trend) maps whole columns at once. A value that is missing, or that
the rule cannot score (a category not listed, a ratio over zero seats), gives
NaN: the metric is *absent* for that account and its weight is redistributed
by the scorer. Absent is never zero (seed 001: "you need data for all
dimensions, or the math breaks" — so we never pretend a gap is a bad value).

A column the frame does not have at all makes the metric absent for every
account; `rule_columns` lets the scorer report which columns were missing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from healthsync.engine.inputs import rule_columns  # noqa: F401 - the list lives with model_inputs
from healthsync.engine.keys import arrow_strings
import pyarrow as pa
import pyarrow.compute as pc

from healthsync.config.model import (
    BooleanRule,
    CategoryRule,
    IdentityRule,
    LinearRule,
    RatioRule,
    StepsRule,
    TrendRule,
)

TREND_CLASSES = ("declining", "stable", "increasing")


def numeric_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    """float64 values of a column (NaN where missing, unparseable, or the column is absent)."""
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    col = frame[column]
    if pd.api.types.is_bool_dtype(col.dtype):
        return col.astype("float64").to_numpy(dtype="float64", na_value=np.nan)
    if not pd.api.types.is_numeric_dtype(col.dtype):
        col = pd.to_numeric(col, errors="coerce")
    return col.to_numpy(dtype="float64", na_value=np.nan)


def text_column(frame: pd.DataFrame, column: str) -> pd.Series:
    """Lower-cased, stripped strings (NA where missing); categories compare case-insensitively."""
    if column not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="object")
    col = frame[column]
    return col.astype("string").str.strip().str.lower()


def category_codes(frame: pd.DataFrame, column: str, choices: list[str]) -> np.ndarray:
    """Index into `choices` of each row's value (case-insensitive, stripped); -1 if missing or unlisted."""
    if column not in frame.columns or len(frame) == 0:
        return np.full(len(frame), -1, dtype=np.int64)
    raw = arrow_strings(frame[column])
    keys = pa.array([str(c).strip().lower() for c in choices], pa.large_string())
    codes = pc.index_in(raw, value_set=keys)
    if codes.null_count > raw.null_count:
        # some values are not already lower-case and trimmed (canonical values are): normalise them all
        codes = pc.index_in(pc.utf8_lower(pc.utf8_trim_whitespace(raw)), value_set=keys)
    return pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def lookup(codes: np.ndarray, values: list[float], missing: float = np.nan) -> np.ndarray:
    """values[codes] with -1 -> `missing` (float64)."""
    table = np.append(np.asarray(values, dtype="float64"), missing)
    return table[np.where(codes < 0, len(values), codes)]


def ratio_values(frame: pd.DataFrame, rule: RatioRule) -> np.ndarray:
    num = numeric_column(frame, rule.numerator)
    den = numeric_column(frame, rule.denominator)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    out[~(den > 0)] = np.nan  # zero seats: utilisation is unknown, not 0 % and not infinite
    return out


def trend_classes(frame: pd.DataFrame, rule: TrendRule) -> np.ndarray:
    """-1 declining, 0 stable, +1 increasing, NaN missing; change = short / long - 1."""
    short = numeric_column(frame, rule.short)
    long = numeric_column(frame, rule.long)
    # a tiny long-window rate overflows to +inf: still "increasing", which is right
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        change = short / long - 1.0
    # long == 0: nothing in the long window; any short activity is an increase, none is stable
    change = np.where(long == 0, np.where(short > 0, np.inf, 0.0), change)
    out = np.where(change > rule.tolerance, 1.0, np.where(change < -rule.tolerance, -1.0, 0.0))
    out[np.isnan(short) | np.isnan(long)] = np.nan
    return out


def _linear(values: np.ndarray, zero_at: float, full_at: float) -> np.ndarray:
    return np.clip((values - zero_at) / (full_at - zero_at) * 100.0, 0.0, 100.0)


def _boolean(frame: pd.DataFrame, column: str) -> np.ndarray:
    """1.0 / 0.0 / NaN from bool, 0/1 numbers, or true/false/yes/no strings."""
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    col = frame[column]
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
        vals = col.astype("float64").to_numpy(dtype="float64", na_value=np.nan)
        return np.where(np.isnan(vals), np.nan, (vals != 0).astype("float64"))
    text = text_column(frame, column)
    mapped = text.map({"true": 1.0, "yes": 1.0, "1": 1.0, "y": 1.0, "false": 0.0, "no": 0.0, "0": 0.0, "n": 0.0})
    return mapped.to_numpy(dtype="float64", na_value=np.nan)


def score_rule(frame: pd.DataFrame, rule) -> np.ndarray:
    """0-100 metric scores (float64, NaN = absent) for every row of `frame`."""
    if isinstance(rule, StepsRule):
        values = numeric_column(frame, rule.column)
        # steps are validated descending, so the first threshold met is the highest earned
        conditions = [values >= s.min for s in rule.steps]
        out = np.select(conditions, [s.points for s in rule.steps], default=rule.else_points).astype("float64")
        out[np.isnan(values)] = np.nan
        return out
    if isinstance(rule, LinearRule):
        return _linear(numeric_column(frame, rule.column), rule.zero_at, rule.full_at)
    if isinstance(rule, RatioRule):
        return _linear(ratio_values(frame, rule), rule.zero_at, rule.full_at)
    if isinstance(rule, CategoryRule):
        choices = list(rule.points)
        return lookup(category_codes(frame, rule.column, choices), [float(rule.points[c]) for c in choices])
    if isinstance(rule, BooleanRule):
        flags = _boolean(frame, rule.column)
        return np.where(np.isnan(flags), np.nan, np.where(flags == 1.0, rule.true_points, rule.false_points))
    if isinstance(rule, IdentityRule):
        return np.clip(numeric_column(frame, rule.column), 0.0, 100.0)
    if isinstance(rule, TrendRule):
        cls = trend_classes(frame, rule)
        out = np.select(
            [cls == -1.0, cls == 0.0, cls == 1.0],
            [rule.points["declining"], rule.points["stable"], rule.points["increasing"]],
            default=np.nan,
        )
        return out.astype("float64")
    raise TypeError(f"unknown rule type {type(rule).__name__}")  # pragma: no cover - schema forbids it


def rule_max_points(rule) -> float:
    """The most points a rule can award (the points method scales by it)."""
    if isinstance(rule, StepsRule):
        return max([s.points for s in rule.steps] + [rule.else_points])
    if isinstance(rule, CategoryRule):
        return max(rule.points.values())
    if isinstance(rule, BooleanRule):
        return max(rule.true_points, rule.false_points)
    if isinstance(rule, TrendRule):
        return max(rule.points.values())
    return 100.0
