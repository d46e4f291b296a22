"""Drift: has the population the model scores moved away from the one it was validated on?

Two kinds of trouble, both cheap to detect on every `healthsync run`:

* slow drift — a metric's distribution shifts (product change, new customer
  mix); measured per metric with the population stability index (PSI) between
  a reference frame (the training period) and the current snapshot. Seed
  000_caaf87bd3b38802c.txt: re-calibrate "upon detecting drift > 5% in feature
  distributions". PSI bands are the usual credit-scoring ones: < 0.1 stable,
  0.1-0.25 moderate, > 0.25 significant.
* the silent broken integration of seed 003_cec208348d92c0f6.txt ("a product
  analytics sync breaks, login frequency drops to 0 for all accounts, and
  suddenly every account looks at-risk") — a metric whose inputs are zero or
  missing for every account, and more than half the book in one band.

Inputs are frames with one row per account holding metric scores `m_<metric>`
(the scorer's output), optionally the raw feature columns the rules read and a
`band` column. Everything is column-wise numpy: a 100k-account book takes
milliseconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from healthsync.config.model import ModelConfig
from healthsync.engine.usage import unavailable_usage_metrics
from healthsync.engine.rules import numeric_column, rule_columns

PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
BAND_CONCENTRATION = 0.5  # brief: warn when more than half the accounts sit in one band
_EPS = 1e-4  # floor on bin shares so an empty bin does not make PSI infinite
_MAX_BINS = 10
#: "zero for every account" is only suspicious in a book big enough for zero to be implausible
MIN_ROWS_FOR_ZERO_WARNING = 20


def psi(reference, current, bins: int = _MAX_BINS) -> float | None:
    """Population stability index of `current` against `reference` (NaN ignored; None when either is empty).

    Few distinct values (step and category rules give 3-4) are compared value
    by value; continuous values by the reference's quantile bins. Values
    outside the reference range fall in the outer bins.
    """
    ref = np.asarray(reference, dtype="float64")
    cur = np.asarray(current, dtype="float64")
    ref = ref[~np.isnan(ref)]
    cur = cur[~np.isnan(cur)]
    if not len(ref) or not len(cur):
        return None
    values = np.unique(ref)
    if len(values) <= bins:
        # discrete: one bin per reference value, anything new lands in an extra bin
        ref_idx = np.searchsorted(values, ref)
        pos = np.searchsorted(values, cur)
        known = (pos < len(values)) & (values[np.minimum(pos, len(values) - 1)] == cur)
        cur_idx = np.where(known, pos, len(values))
        n_bins = len(values) + 1
    else:
        edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1))[1:-1])
        ref_idx = np.searchsorted(edges, ref, side="right")
        cur_idx = np.searchsorted(edges, cur, side="right")
        n_bins = len(edges) + 1
    r = np.maximum(np.bincount(ref_idx, minlength=n_bins) / len(ref), _EPS)
    c = np.maximum(np.bincount(cur_idx, minlength=n_bins) / len(cur), _EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def _level(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value > PSI_SIGNIFICANT:
        return "significant"
    if value > PSI_MODERATE:
        return "moderate"
    return "stable"


def _dead_inputs(frame: pd.DataFrame, metric) -> str | None:
    """'missing' / 'zero' when the metric's inputs are missing or zero for every account, else None."""
    score_col = f"m_{metric.name}"
    cols = [c for c in rule_columns(metric.rule) if c in frame.columns]
    if cols:
        # a ratio is broken when its numerator is; its denominator (seats) is static master data
        col = cols[0]
        values = numeric_column(frame, col)
        text = frame[col]
        if not pd.api.types.is_numeric_dtype(text.dtype) and not pd.api.types.is_bool_dtype(text.dtype):
            if text.isna().all():
                return "missing"
            return None
        if np.isnan(values).all():
            return "missing"
        if np.nanmax(np.abs(values)) == 0 and len(frame) >= MIN_ROWS_FOR_ZERO_WARNING:
            return "zero"
        return None
    if score_col in frame.columns and frame[score_col].isna().all():
        return "missing"
    if not cols and score_col not in frame.columns:
        return "missing"
    return None


def drift_report(reference: pd.DataFrame | None, current: pd.DataFrame, model: ModelConfig) -> dict:
    """Per-metric PSI (reference -> current) and the warnings a RevOps admin must see (JSON-safe).

    `reference` is usually the training period's scored rows (all snapshots
    stacked) or the previous run's, `current` the latest snapshot. Both are
    the scorer's output, optionally joined with the feature columns (needed to
    tell "zero" from "missing" for the broken-integration warning). With no
    reference (a first run) PSI is None and only the warnings are computed.
    """
    if reference is None:
        reference = current.iloc[0:0]
    metrics = {}
    warnings: list[str] = []
    # product-usage metrics are out of the model where no warehouse feeds it (engine/usage.py): nothing to warn about
    not_in_use = unavailable_usage_metrics(model, current.columns)
    for metric in model.metrics:
        if metric.name in not_in_use:
            metrics[metric.name] = {"psi": None, "level": "unknown", "present_share": None, "inputs": "no warehouse"}
            continue
        col = f"m_{metric.name}"
        value = None
        if col in reference.columns and col in current.columns:
            value = psi(reference[col], current[col])
        dead = _dead_inputs(current, metric) if len(current) else None
        present = float(current[col].notna().mean()) if col in current.columns and len(current) else None
        metrics[metric.name] = {"psi": value, "level": _level(value), "present_share": present, "inputs": dead or "ok"}
        if dead:
            inputs = ", ".join(rule_columns(metric.rule))
            warnings.append(
                f"metric {metric.name}: {inputs} is {dead} for every account in the current snapshot "
                "- check the data integration feeding it (a broken sync looks like a book-wide decline)"
            )
        elif value is not None and value > PSI_SIGNIFICANT:
            warnings.append(
                f"metric {metric.name}: distribution shifted significantly since the training period "
                f"(PSI {value:.2f} > {PSI_SIGNIFICANT}) - re-run `healthsync calibrate`"
            )
    bands = {}
    if "band" in current.columns and len(current):
        shares = current["band"].astype("string").fillna("(none)").value_counts(normalize=True)
        bands = {str(k): float(v) for k, v in shares.items()}
        for name, share in bands.items():
            if share > BAND_CONCENTRATION:
                warnings.append(
                    f"band {name}: {share:.0%} of accounts are in one band (more than "
                    f"{BAND_CONCENTRATION:.0%}) - the bands no longer separate the book; check thresholds and inputs"
                )
    return {
        "reference_rows": int(len(reference)),
        "current_rows": int(len(current)),
        "metrics": metrics,
        "band_shares": bands,
        "warnings": warnings,
    }
