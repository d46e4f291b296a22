"""HealthScorer: metric rules -> composite score, band, confidence, override — vectorised.

The composite (seed 001_9b7515619717186a.txt, "Simple Weighted Average") is
the weight-normalised mean of the metric scores present:

    score = sum(w_i * m_i for present i) / sum(w_i for present i)
    confidence = sum(w_i for present i)          (weights sum to 1)

so a missing metric's weight is redistributed over the metrics present and
never counts as zero. Below `confidence_floor` the band is `insufficient_band`
(the score is still reported when anything is present). Dimension scores are
the same mean restricted to one dimension's metrics, so the composite equals
the dimension-weighted mean of the dimension scores.

Methods (seed 001, "Score Calculation Methods"):
- weighted (default): as above.
- points: each rule awards absolute points (seed 001 "Points-Based Scoring",
  Customer A -> 65); score = points earned / confidence, clipped to 100.
  Weights only say how much of the model a metric is (confidence and
  redistribution). `m_<metric>` holds the points earned.
- percentile: the weighted score ranked within the cohort column
  (`percentile_cohort`, default segment): the share of the cohort scoring at
  or below the account, x 100.
- traffic_light: band by rules (`traffic_light`: every listed metric score at
  or above its minimum -> best band; `traffic_light_red`: any listed metric
  below its value -> worst band; otherwise the middle band). The reported
  score is the weighted score, so trends and the forecast keep working.
- fitted: health = 100 - 100 x churn probability, with the probability from
  `model.fitted` (platt / logistic on the metric scores / isotonic knots /
  regression on the metrics' raw values, engine.regression).

Thresholds: base bands -> segment -> lifecycle stage -> renewal window, later
winning per band (config/model.py). The combined minimums are then made
non-decreasing (a band never starts below the band beneath it), so a renewal
window's "Yellow from 65" also lifts an onboarding "Green from 60" to 65.
A score belongs to the highest band whose minimum it reaches (inclusive).

CSM override (seed 003_cec208348d92c0f6.txt: "can shift score up/down one
tier"): the sentiment's shift moves the band by at most `max_tiers`, never
past the best or worst band; `override` and `override_reason` record it and
`raw_band` keeps the band before it. An insufficient-data account is not
overridden: there is no computed band to move.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from healthsync.config.model import ModelConfig
from healthsync.engine.keys import map_chunks, take_strings
from healthsync.engine.lifecycle import in_renewal_window, lifecycle_stage
from healthsync.engine.rules import category_codes, lookup, rule_columns, rule_max_points, score_rule
from healthsync.engine.usage import redistribute_within_dimension, unavailable_usage_metrics


def round_score(values: np.ndarray) -> np.ndarray:
    """One decimal, halves rounded up (73.25 -> 73.3), robust to float noise (73.999999 -> 74.0)."""
    return np.floor(values * 10.0 + 0.5 + 1e-7) / 10.0


class HealthScorer:
    """Score accounts with a `ModelConfig` (scikit-learn style: `__init__` only stores it).

    `score(features)` returns one row per input row; `metric_scores_(features)`
    and `weights_matrix_(features)` are the pieces drivers reuse.
    """

    def __init__(self, model: ModelConfig, chunk_size: int = 131_072):
        self.model = model
        self.chunk_size = chunk_size

    def fit(self, features: pd.DataFrame | None = None, y=None) -> "HealthScorer":
        """Nothing to learn: the rule-based model is configuration. Kept for the estimator protocol."""
        return self

    # ------------------------------------------------------------------ pieces

    def metric_matrix(self, features: pd.DataFrame) -> np.ndarray:
        """(n_accounts, n_metrics) metric scores, NaN where absent."""
        # stacked metric-major, returned transposed: each metric's scores stay one contiguous block
        return np.vstack([score_rule(features, m.rule) for m in self.model.metrics]).T

    def weight_matrix(self, features: pd.DataFrame, segments: np.ndarray | None = None) -> np.ndarray:
        """(n_accounts, n_metrics) weights, segment weights applied per row.

        Without segment weights every row is the same: a read-only broadcast view of one row
        (no n x metrics copy), which element-wise arithmetic treats exactly like the full matrix.
        """
        model = self.model
        base = np.array([m.weight for m in model.metrics], dtype="float64")
        # product-usage metrics with no warehouse feeding this frame are not part of the model (engine/usage.py)
        dropped = unavailable_usage_metrics(model, features.columns)
        if not any(seg.weights for seg in model.segments.values()):
            if dropped:  # the same redistribution for every row: done on one row
                base = redistribute_within_dimension(base[None, :], model, dropped)[0]
            return np.broadcast_to(base, (len(features), len(base)))
        weights = np.broadcast_to(base, (len(features), len(base))).copy()
        if segments is None:
            segments = self._segment_codes(features)
        for code, (name, seg) in enumerate(model.segments.items()):
            if seg.weights:
                rows = segments == code
                weights[rows] = np.array(list(model.weights(name).values()), dtype="float64")
        return redistribute_within_dimension(weights, model, dropped) if dropped else weights

    def missing_columns(self, features: pd.DataFrame) -> list[str]:
        """Columns the model reads that the frame does not have (their metrics are absent everywhere)."""
        needed = {c for m in self.model.metrics for c in rule_columns(m.rule)}
        return sorted(needed - set(features.columns))

    def _segment_codes(self, features: pd.DataFrame) -> np.ndarray:
        """Index into `model.segments` of each row's segment (-1: none of them)."""
        return category_codes(features, "segment", list(self.model.segments))

    def band_minimums(self, features: pd.DataFrame, stage: pd.Series, renewal: np.ndarray,
                      segments: np.ndarray | None = None) -> np.ndarray:
        """(n_accounts, n_bands) band minimums after segment, stage and renewal overrides."""
        model = self.model
        names = [b.name for b in model.bands]
        mins = np.broadcast_to(np.array([b.min for b in model.bands], dtype="float64"), (len(features), len(names))).copy()

        def overlay(rows: np.ndarray, thresholds: dict[str, float]) -> None:
            for band, value in thresholds.items():
                mins[rows, names.index(band)] = value

        if segments is None:
            segments = self._segment_codes(features)
        for code, (name, seg) in enumerate(model.segments.items()):
            if seg.thresholds:
                overlay(segments == code, seg.thresholds)
        for st in model.lifecycle.stages:
            if st.thresholds:
                overlay((stage == st.name).fillna(False).to_numpy(dtype=bool), st.thresholds)
        if model.lifecycle.renewal_window and model.lifecycle.renewal_window.thresholds:
            overlay(renewal, model.lifecycle.renewal_window.thresholds)
        return np.maximum.accumulate(mins, axis=1)

    # ------------------------------------------------------------------ scoring

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """One row per features row, in order (see the module docstring for the columns).

        Large frames are scored in row chunks: the (accounts x metrics) temporaries
        then stay small enough to be reused instead of re-mapped from the OS for
        every operation, which is most of the cost at a million accounts. The
        percentile method ranks within the whole cohort, so it is never chunked.
        """
        n = len(features)
        if n <= self.chunk_size or self.model.method == "percentile":
            return self._score(features)
        parts = map_chunks(lambda start, stop: self._score(features.iloc[start:stop]), n, self.chunk_size)
        self.missing_columns_ = self.missing_columns(features)
        return pd.concat(parts, ignore_index=True)

    def _score(self, features: pd.DataFrame) -> pd.DataFrame:
        model = self.model
        n = len(features)
        metric_names = [m.name for m in model.metrics]
        self.missing_columns_ = self.missing_columns(features)

        raw = self.metric_matrix(features)
        segments = self._segment_codes(features)
        weights = self.weight_matrix(features, segments)
        present = ~np.isnan(raw)
        present_weight = np.where(present, weights, 0.0)
        confidence = present_weight.sum(axis=1)
        safe_conf = np.where(confidence > 0, confidence, np.nan)

        if model.method == "points":
            points = np.where(present, raw, 0.0).sum(axis=1)
            composite = np.clip(points / safe_conf, 0.0, 100.0)
            # normalised 0-100 metric scores for dimension scores
            max_points = np.array([rule_max_points(m.rule) for m in model.metrics], dtype="float64")
            normalised = raw / np.where(max_points > 0, max_points, np.nan) * 100.0
        else:
            normalised = raw
        # weight x metric score of the metrics present (0 for the absent), reused by the dimension scores
        contributions = np.where(present, normalised * weights, 0.0)
        if model.method == "points":
            np.nan_to_num(contributions, copy=False)  # a rule whose maximum is 0 points has no 0-100 score
        else:
            composite = contributions.sum(axis=1) / safe_conf

        out: dict[str, object] = {}  # columns collected first, one DataFrame built at the end
        out["account_id"] = (features["account_id"] if "account_id" in features.columns else features.index.to_series()).array

        score = composite
        if model.method == "percentile":
            score = self._percentile(features, composite)
        elif model.method == "fitted":
            score = self._fitted(composite, normalised, features)
        score = round_score(np.clip(score, 0.0, 100.0))

        stage = lifecycle_stage(features, model)
        renewal = in_renewal_window(features, model)
        mins = self.band_minimums(features, stage, renewal, segments)
        band_names = np.array([b.name for b in model.bands] + [model.insufficient_band], dtype=object)
        insufficient_idx = len(model.bands)
        with np.errstate(invalid="ignore"):
            idx = (score[:, None] >= mins).sum(axis=1) - 1
        if model.method == "traffic_light":
            idx = self._traffic_light(normalised)
        insufficient = np.isnan(score) | (confidence < model.confidence_floor - 1e-12)
        idx = np.where(insufficient, insufficient_idx, np.clip(idx, 0, len(model.bands) - 1))

        final_idx, reason = self._csm_override(features, idx, insufficient_idx, band_names)

        out["score"] = score
        out["band"] = take_strings(band_names, final_idx)
        out["confidence"] = np.round(confidence, 4)
        # dimension scores: weighted sums per dimension as one matrix product with a metric->dimension indicator
        # dimension scores: the same weighted mean over each dimension's metrics, summed column by
        # column (in config order) rather than through a BLAS product: a handful of additions per row
        for dim in model.dimensions:
            members = [i for i, m in enumerate(model.metrics) if m.dimension == dim]
            dim_num, dim_den = contributions[:, members[0]].copy(), present_weight[:, members[0]].copy()
            for i in members[1:]:
                dim_num += contributions[:, i]
                dim_den += present_weight[:, i]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"{dim}_score"] = np.where(dim_den > 0, round_score(dim_num / np.where(dim_den > 0, dim_den, 1.0)), np.nan)
        for i, name in enumerate(metric_names):
            out[f"m_{name}"] = raw.T[i]
        out["override"] = final_idx != idx
        out["override_reason"] = pd.arrays.ArrowStringArray(reason)
        out["method"] = take_strings([model.method], np.zeros(n, dtype=np.int64))
        out["segment"] = features["segment"].array if "segment" in features.columns else take_strings([], np.full(n, -1))
        out["lifecycle_stage"] = stage.array
        out["in_renewal_window"] = renewal
        out["raw_band"] = take_strings(band_names, idx)
        return pd.DataFrame(out, copy=False)

    # ------------------------------------------------------------------ methods

    def _percentile(self, features: pd.DataFrame, composite: np.ndarray) -> np.ndarray:
        cohort_col = self.model.percentile_cohort
        if cohort_col in features.columns:
            cohort = features[cohort_col].astype("string").fillna("").to_numpy()
        else:
            cohort = np.zeros(len(features), dtype=np.int8)
        ranks = pd.Series(composite).groupby(cohort).rank(method="max", pct=True)
        return ranks.to_numpy(dtype="float64", na_value=np.nan) * 100.0

    def _fitted(self, composite: np.ndarray, normalised: np.ndarray, features: pd.DataFrame) -> np.ndarray:
        fitted = self.model.fitted
        if fitted is None:
            raise ValueError("model.fitted: method 'fitted' needs a fitted model (run `healthsync calibrate`)")
        if fitted.kind == "regression":
            from healthsync.engine.regression import regression_probability

            prob = regression_probability(features, self.model, fitted)
        elif fitted.kind == "isotonic":
            if len(fitted.x) < 2 or len(fitted.x) != len(fitted.y):
                raise ValueError("model.fitted.x/y: isotonic needs at least two knots of equal length")
            prob = np.interp(composite, fitted.x, fitted.y)
        elif fitted.kind == "platt":
            if len(fitted.coef) != 1:
                raise ValueError("model.fitted.coef: platt needs exactly one coefficient (on the score)")
            prob = 1.0 / (1.0 + np.exp(-(fitted.coef[0] * composite + fitted.intercept)))
        else:
            names = [m.name for m in self.model.metrics]
            unknown = sorted(set(fitted.metrics) - set(names))
            if unknown:
                raise ValueError(f"model.fitted.metrics: unknown metrics {unknown}")
            if len(fitted.coef) != len(fitted.metrics):
                raise ValueError("model.fitted.coef: logistic needs one coefficient per entry of model.fitted.metrics")
            cols = [names.index(m) for m in fitted.metrics]
            x = normalised[:, cols]
            # an absent metric takes the account's own composite: neither good nor bad news
            x = np.where(np.isnan(x), composite[:, None], x)
            prob = 1.0 / (1.0 + np.exp(-(x @ np.asarray(fitted.coef, dtype="float64") + fitted.intercept)))
        return 100.0 - 100.0 * prob

    def _traffic_light(self, normalised: np.ndarray) -> np.ndarray:
        model = self.model
        names = [m.name for m in model.metrics]
        n = normalised.shape[0]
        green = np.ones(n, dtype=bool)
        for metric, minimum in model.traffic_light.items():
            green &= normalised[:, names.index(metric)] >= minimum  # absent never qualifies for green
        red = np.zeros(n, dtype=bool)
        for metric, below in model.traffic_light_red.items():
            red |= normalised[:, names.index(metric)] < below  # absent never makes red
        best, worst = len(model.bands) - 1, 0
        middle = min(1, best)
        if not model.traffic_light:
            green[:] = False
        return np.where(red, worst, np.where(green, best, middle))

    def _csm_override(self, features, idx: np.ndarray, insufficient_idx: int, band_names: np.ndarray):
        """(band index after the CSM override, reason as an Arrow string array, null where none)."""
        model = self.model
        csm = model.csm_override
        no_reason = pa.nulls(len(idx), pa.large_string())
        if not csm.enabled or csm.max_tiers == 0 or csm.column not in features.columns:
            return idx, no_reason
        choices = list(csm.shifts)
        codes = category_codes(features, csm.column, choices)
        shift = lookup(codes, [float(csm.shifts[c]) for c in choices], missing=0.0)
        shift = np.clip(shift, -csm.max_tiers, csm.max_tiers).astype(np.int64)
        scored = idx != insufficient_idx
        moved = np.where(scored, np.clip(idx + shift, 0, len(model.bands) - 1), idx)
        changed = moved != idx
        if not changed.any():
            return moved, no_reason
        # one text per (sentiment, band before, band after) combination, gathered by row: no
        # Python string per account
        sentiments = [str(c).strip().lower() for c in choices]
        n_bands = len(band_names)
        texts = [
            f"CSM sentiment {sentiment}: {band_names[before]} -> {band_names[after]}"
            for sentiment in sentiments for before in range(n_bands) for after in range(n_bands)
        ]
        combo = (np.where(codes >= 0, codes, 0) * n_bands + idx) * n_bands + moved
        reason = pa.array(texts, pa.large_string()).take(pa.array(combo, mask=~changed))
        return moved, reason
