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
import pyarrow as pa
import pyarrow.compute as pc

from healthsync.config.model import BooleanRule, CategoryRule, Metric, ModelConfig, RatioRule, TrendRule
from healthsync.engine.keys import arrow_strings, equals_any, map_chunks, positions
from healthsync.engine.rules import TREND_CLASSES, _boolean, numeric_column, ratio_values, rule_max_points, text_column, trend_classes
from healthsync.engine.scoring import HealthScorer

MAX_DRIVER_CHARS = 255  # Salesforce/HubSpot single-line text field


def _number_text(values: np.ndarray, decimals: int | None = None) -> pa.Array:
    """0.23 -> '0.23', 5.0 -> '5', 35.04 -> '35': 2 decimals under 10, else 1 (Arrow strings)."""
    if decimals is None:
        rounded = np.where(np.abs(values) < 10, np.round(values, 2), np.round(values, 1))
    else:
        rounded = np.round(values, decimals)
    return pa.array(rounded, pa.float64(), from_pandas=True).cast(pa.large_string())


def _fmt(x: float | None, percent: bool = False) -> str:
    if x is None:
        return ""
    if percent:
        x = x * 100
    return (f"{x:.1f}".rstrip("0").rstrip(".")) + ("%" if percent else "")


def _join(*parts) -> pa.Array:
    """Element-wise concatenation of Arrow arrays and plain strings."""
    items = [pa.scalar(p, pa.large_string()) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*items, pa.scalar("", pa.large_string()))


def _value_text(metric: Metric, features: pd.DataFrame, rows: np.ndarray) -> pa.Array:
    rule = metric.rule
    if isinstance(rule, RatioRule):
        return _join(_number_text(ratio_values(features, rule)[rows] * 100.0, decimals=0), "%")
    if isinstance(rule, CategoryRule):
        values = arrow_strings(features[rule.column]).take(pa.array(rows))
        return pc.utf8_lower(pc.utf8_trim_whitespace(values))
    if isinstance(rule, BooleanRule):
        flags = _boolean(features, rule.column)[rows] == 1.0
        return pa.array(["no", "yes"], pa.large_string()).take(pa.array(flags.astype(np.int64)))
    if isinstance(rule, TrendRule):
        cls = trend_classes(features, rule)[rows]
        return pa.array(TREND_CLASSES, pa.large_string()).take(pa.array(np.nan_to_num(cls).astype(np.int64) + 1))
    return _number_text(numeric_column(features, rule.column)[rows])


def _metric_text(metric: Metric, features: pd.DataFrame, rows: np.ndarray) -> pa.Array:
    value = _value_text(metric, features, rows)
    rule = metric.rule
    if metric.driver:
        head, _, tail = metric.driver.replace("{label}", metric.label).replace("{unit}", metric.unit).replace(
            "{target}", _fmt(metric.target)
        ).partition("{value}")
        return _join(head, value, tail)
    if isinstance(rule, (CategoryRule, BooleanRule)):
        return _join(f"{metric.label}: ", value)
    if isinstance(rule, TrendRule):
        return _join(f"{metric.label} ", value)
    unit = metric.unit
    if unit and unit[0].isalpha():
        unit = " " + unit
    target = ""
    if metric.target is not None:
        target = f" (target {_fmt(metric.target, percent=isinstance(rule, RatioRule))})"
    return _join(f"{metric.label} ", value, unit + target)


def point_effects(scored: pd.DataFrame, features: pd.DataFrame, model: ModelConfig, best: np.ndarray) -> np.ndarray:
    """Per account and metric, the points it adds to the score (accounts in the best band) or
    costs it (all others); NaN where the metric is absent. Only the side each account needs
    is computed: one (accounts x metrics) array fewer at every step."""
    raw = np.column_stack([scored[f"m_{m.name}"].to_numpy(dtype="float64", na_value=np.nan) for m in model.metrics])
    weights = HealthScorer(model).weight_matrix(features)
    present = ~np.isnan(raw)
    conf = np.where(present, weights, 0.0).sum(axis=1, keepdims=True)
    conf = np.where(conf > 0, conf, np.nan)
    # points each account needs: earned (best band) or still to earn (the others), in place
    top = np.array([rule_max_points(m.rule) for m in model.metrics], dtype="float64") if model.method == "points" else 100.0
    points = np.subtract(top, raw)
    np.copyto(points, raw, where=best[:, None])
    if model.method == "points":
        points /= conf
        return points
    effect = np.divide(weights, conf)  # the weight after redistribution, then times the points
    effect *= points
    return effect


def explain(scored: pd.DataFrame, features: pd.DataFrame, model: ModelConfig, top_n: int = 3) -> pd.Series:
    """Top `top_n` drivers per scored account as one string (indexed like `scored`)."""
    n = len(scored)
    if n == 0:
        return pd.Series([], index=scored.index, dtype="string")
    # align features to scored rows by account id (positional when already aligned)
    scored_ids = arrow_strings(scored["account_id"])
    feat_ids = arrow_strings(features["account_id"])
    if len(feat_ids) != n or not scored_ids.equals(feat_ids):
        pos = positions(scored_ids, feat_ids)
        if (pos < 0).any():
            missing = scored_ids[int(np.flatnonzero(pos < 0)[0])].as_py()
            raise ValueError(f"drivers: account {missing} is scored but has no features row")
        features = features.iloc[pos].reset_index(drop=True)
    pieces = map_chunks(
        lambda start, stop: _explain_rows(scored.iloc[start:stop], features.iloc[start:stop], model, top_n), n, 131_072
    )
    return pd.Series(pd.arrays.ArrowStringArray(pa.concat_arrays(pieces)), index=scored.index)


def _explain_rows(scored: pd.DataFrame, features: pd.DataFrame, model: ModelConfig, top_n: int) -> pa.Array:
    n = len(scored)
    best = equals_any(scored["band"], (model.bands[-1].name,), case_insensitive=False)
    effect = point_effects(scored, features, model, best)
    effect[~(effect > 1e-9)] = -np.inf  # absent (NaN) or costing nothing: not a driver
    k = min(top_n, effect.shape[1])
    # the top k per row by repeated argmax: ties go to the metric listed first, exactly as a
    # stable sort would order them, at a fraction of the cost of sorting every row
    order = np.empty((n, k), dtype=np.int64)
    valid = np.empty((n, k), dtype=bool)
    every_row = np.arange(n)
    for r in range(k):
        top = effect.argmax(axis=1)
        order[:, r] = top
        valid[:, r] = effect[every_row, top] > -np.inf
        effect[every_row, top] = -np.inf

    # one text pass per metric over the rows where it is a driver at any rank, then one gather
    # per rank; the (row, rank) slots are grouped by metric in one stable sort, not one scan each
    slots = np.flatnonzero(valid.ravel())  # row-major: by row, then rank
    metric_of = order.ravel()[slots]
    # a stable sort of small integers as uint8/uint16 is a radix sort: linear, not n log n
    small = metric_of.astype(np.uint8 if len(model.metrics) <= 255 else np.uint16)
    by_metric = slots[np.argsort(small, kind="stable")]
    counts = np.bincount(metric_of, minlength=len(model.metrics))
    text_of_slot = np.empty(n * k, dtype=np.int64)
    text_of_slot[by_metric] = np.arange(by_metric.size)  # texts are built metric by metric below
    texts, start = [], 0
    for j, metric in enumerate(model.metrics):
        if counts[j]:
            rows = by_metric[start : start + counts[j]] // k
            texts.append(_metric_text(metric, features, rows).cast(pa.large_string()))
            start += counts[j]
    if not texts:
        return pa.array([""] * n, pa.large_string())
    # each row's drivers in rank order as one list, joined with "; " in one kernel (no drivers: "")
    in_row_order = pa.concat_arrays(texts).take(pa.array(text_of_slot[slots]))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(valid.sum(axis=1), out=offsets[1:])
    joined = pc.binary_join(pa.LargeListArray.from_arrays(pa.array(offsets), in_row_order), pa.scalar("; ", pa.large_string()))
    text_bytes = np.diff(np.frombuffer(joined.buffers()[1], dtype=np.int64, count=n + 1, offset=joined.offset * 8))
    if text_bytes.size and text_bytes.max() > MAX_DRIVER_CHARS:  # bytes >= characters: only then count characters
        too_long = pc.greater(pc.utf8_length(joined), MAX_DRIVER_CHARS)
        cut = _join(pc.utf8_slice_codeunits(joined, 0, MAX_DRIVER_CHARS - 1), "…")
        joined = pc.if_else(too_long, cut, joined)
    return joined
