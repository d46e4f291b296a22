"""Score drivers: the metrics costing an account the most points, as text a rep understands.

For each present metric, its effective weight is w / confidence (the weight
after redistribution), so the points it adds to the composite are
`w_eff x metric score` and the points it costs are `w_eff x (100 - metric
score)` (points method: `max points - points earned`, over confidence). For
accounts in the best band the drivers are the metrics adding the most
(why they are healthy); for all others the metrics costing the most. Ties go
to the metric listed first in the config. A metric costing nothing is not a
driver.

Text: `Metric.driver` when configured (a `{value}` placeholder, e.g.
`{value} escalations in 90 days`), otherwise by rule type:
`Logins 0.4/user/week (target 5)`, `License utilisation 35% (target 100%)`,
`Exec sponsor: none`, `Ticket volume increasing`. Items are joined with
`; ` and cut to 255 characters (a CRM text field).

Vectorised: one formatting pass per (metric, rank) over only the rows that
need it; no per-account Python.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from config.model import BooleanRule, CategoryRule, Metric, ModelConfig, RatioRule, TrendRule
from engine.rules import TREND_CLASSES, _boolean, numeric_column, ratio_values, rule_max_points, text_column, trend_classes
from engine.scoring import HealthScorer

MAX_DRIVER_CHARS = 255  # Salesforce/HubSpot single-line text field


def _number_text(values: np.ndarray, decimals: int | None = None) -> np.ndarray:
    """0.23 -> '0.23', 5.0 -> '5', 35.04 -> '35' (object array): 2 decimals under 10, else 1."""
    if decimals is None:
        rounded = np.where(np.abs(values) < 10, np.round(values, 2), np.round(values, 1))
    else:
        rounded = np.round(values, decimals)
    whole = rounded == np.round(rounded)
    ints = np.where(whole, rounded, 0).astype(np.int64).astype(str).astype(object)
    floats = rounded.astype(str).astype(object)
    return np.where(whole, ints, floats)


def _fmt(x: float | None, percent: bool = False) -> str:
    if x is None:
        return ""
    if percent:
        x = x * 100
    return (f"{x:.1f}".rstrip("0").rstrip(".")) + ("%" if percent else "")


def _value_text(metric: Metric, features: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    rule = metric.rule
    if isinstance(rule, RatioRule):
        return _number_text(ratio_values(features, rule)[rows] * 100.0, decimals=0) + "%"
    if isinstance(rule, CategoryRule):
        return text_column(features, rule.column).to_numpy(dtype=object, na_value="")[rows]
    if isinstance(rule, BooleanRule):
        return np.where(_boolean(features, rule.column)[rows] == 1.0, "yes", "no").astype(object)
    if isinstance(rule, TrendRule):
        cls = trend_classes(features, rule)[rows]
        return np.array(TREND_CLASSES, dtype=object)[np.nan_to_num(cls).astype(np.int64) + 1]
    return _number_text(numeric_column(features, rule.column)[rows])


def _metric_text(metric: Metric, features: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    value = _value_text(metric, features, rows)
    rule = metric.rule
    if metric.driver:
        head, _, tail = metric.driver.replace("{label}", metric.label).replace("{unit}", metric.unit).replace(
            "{target}", _fmt(metric.target)
        ).partition("{value}")
        return head + value + tail
    if isinstance(rule, (CategoryRule, BooleanRule)):
        return f"{metric.label}: " + value
    if isinstance(rule, TrendRule):
        return f"{metric.label} " + value
    unit = metric.unit
    if unit and unit[0].isalpha():
        unit = " " + unit
    target = ""
    if metric.target is not None:
        target = f" (target {_fmt(metric.target, percent=isinstance(rule, RatioRule))})"
    return f"{metric.label} " + value + unit + target


def point_effects(scored: pd.DataFrame, features: pd.DataFrame, model: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(earned, lost) points per account and metric (NaN where the metric is absent)."""
    raw = np.column_stack([scored[f"m_{m.name}"].to_numpy(dtype="float64", na_value=np.nan) for m in model.metrics])
    weights = HealthScorer(model).weight_matrix(features)
    present = ~np.isnan(raw)
    conf = np.where(present, weights, 0.0).sum(axis=1, keepdims=True)
    conf = np.where(conf > 0, conf, np.nan)
    if model.method == "points":
        max_points = np.array([rule_max_points(m.rule) for m in model.metrics], dtype="float64")
        return raw / conf, (max_points - raw) / conf
    w_eff = weights / conf
    return w_eff * raw, w_eff * (100.0 - raw)


def explain(scored: pd.DataFrame, features: pd.DataFrame, model: ModelConfig, top_n: int = 3) -> pd.Series:
    """Top `top_n` drivers per scored account as one string (indexed like `scored`)."""
    n = len(scored)
    if n == 0:
        return pd.Series([], index=scored.index, dtype="object")
    # align features to scored rows by account id (positional when already aligned)
    scored_ids = scored["account_id"].astype("string").to_numpy(dtype=object, na_value=None)
    feat_ids = features["account_id"].astype("string").to_numpy(dtype=object, na_value=None)
    if len(feat_ids) != n or not np.array_equal(scored_ids, feat_ids):
        pos = pd.Index(feat_ids).get_indexer(scored_ids)
        if (pos < 0).any():
            missing = scored_ids[pos < 0][0]
            raise ValueError(f"drivers: account {missing} is scored but has no features row")
        features = features.iloc[pos].reset_index(drop=True)

    earned, lost = point_effects(scored, features, model)
    best = scored["band"].to_numpy(dtype=object) == model.bands[-1].name
    effect = np.where(best[:, None], earned, lost)
    effect = np.where(np.isnan(effect) | (effect <= 1e-9), -np.inf, effect)
    k = min(top_n, effect.shape[1])
    order = np.argsort(-effect, axis=1, kind="stable")[:, :k]
    valid = np.take_along_axis(effect, order, axis=1) > -np.inf

    parts = np.full((n, k), "", dtype=object)
    for j, metric in enumerate(model.metrics):
        hit = (order == j) & valid
        rows, ranks = np.nonzero(hit)
        if rows.size:
            parts[rows, ranks] = _metric_text(metric, features, rows)

    text = parts[:, 0].copy()
    for r in range(1, k):
        nonempty = parts[:, r] != ""
        text = np.where(nonempty, text + "; " + parts[:, r], text)
    out = pd.Series(text, index=scored.index, dtype="object")
    too_long = out.str.len() > MAX_DRIVER_CHARS
    if too_long.any():
        out[too_long] = out[too_long].str.slice(0, MAX_DRIVER_CHARS - 1) + "…"
    return out
