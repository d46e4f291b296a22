"""Calibrate: learn metric weights, band thresholds, a churn-probability map and the forecast map from outcomes.

Seeds: 001_9b7515619717186a.txt ("Data-Driven Model Development": weight each
metric by its correlation with retention - method 1 - or fit a logistic
regression - method 2; recalibrate thresholds), 000_caaf87bd3b38802c.txt
(time-based validation, Platt scaling / isotonic calibration, forecast MAPE).

Procedure (never trains on what it is judged on):

1. Split (engine.splits): with two or more `as_of` snapshots, the earlier
   ones train and the last `holdout` share validate; with one snapshot (or
   `split="random"`), a stratified, seeded holdout of accounts.
2. Weights, from the training part's metric scores:
   - `correlation`: Pearson correlation of each metric score with retention
     (1 - churned) over the accounts where the metric is present;
   - `logistic` and `fitted`: class-weighted logistic regression of retention
     on the standardised metric scores (absent -> the training mean); each
     metric's coefficient brought back to the 0-100 score scale (coef / std).
   Directions (engine.directions): a negative coefficient whose interval
   (95% for all metrics at once, accounts counted once) excludes 0 turns the metric's rule around and weights it by the effect's
   size; one whose interval includes 0 gets weight 0. Weights are normalised
   to sum to 1 (4 decimals, the remainder to the largest).
3. The churn-probability map on the training part: Platt or isotonic on the
   new composite score (`model.fitted`, so `method: fitted` works); with
   `method="fitted"`, a regularised logistic regression on the metrics' raw
   values instead (engine.regression), and the model's method becomes fitted.
4. Band rules, then thresholds: the CSM sentiment override and the segment /
   lifecycle threshold overrides are each tried off (a variant flagging churn
   with clearly better precision at the target recall replaces the configured
   rules, with a warning). The at-risk boundary moves to the lowest integer
   score at which the at-risk bands catch `target_recall` (+ the margin a
   boundary tuned on the past loses later) of the churners in every training
   snapshot, subject to two limits on the training part: at most
   `max_at_risk_share` of account-snapshots at risk, and a precision of at
   least MIN_PRECISION_LIFT x the base rate. When the target cannot be met
   within them, the feasible boundary with the highest recall is taken and a
   warning says what recall it reaches and which limit binds. Every other
   threshold moves with the boundary through one piecewise-linear map of 0-100.
5. Forecast (with opportunities_history): the map from CRM probability,
   health and trend to P(win) is fitted on the training part's deals
   (engine.forecast_fit) and judged on the held-out deals by MAPE and MAE
   against the unadjusted forecast. If it does not lower held-out error, the
   overlay switches the adjustment off (`forecast.enabled: false`) and says so.
6. The report: the calibrated model on the held-out part (the shape of
   `engine.backtest.evaluate`), and the configured model on the same part with
   its probability map also fitted on the training part only, so the two are
   compared on the same footing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from healthsync.config.model import FittedModel, ForecastConfig, ModelConfig
from healthsync.engine import metrics as m
from healthsync.engine.backtest import (
    MIN_PRECISION_LIFT,
    HistoryFrames,
    Snapshot,
    at_risk_bands,
    build_snapshots,
    compare,
    evaluate,
    history_frames,
    score_snapshots,
    snapshot_trends,
)
from healthsync.engine.directions import correlation_interval, interval_z, logistic_intervals, turned_around
from healthsync.engine.forecast_fit import ForecastFitError, fit_forecast
from healthsync.engine.rules import text_column
from healthsync.engine.scoring import HealthScorer
from healthsync.engine.splits import (
    DEFAULT_HOLDOUT,
    DEFAULT_SEED,
    MIN_CHURN_EVENTS,
    SPLITS,
    InsufficientHistoryError,
    split_history,
)


WEIGHT_DECIMALS = 4
METHODS = ("correlation", "logistic", "fitted")
PROBABILITY_MAPS = ("platt", "isotonic")
DEFAULT_MAX_AT_RISK_SHARE = 0.35
#: the class-weighted regression of the logistic method (and its intervals) uses this L2 strength
LOGISTIC_C = 1.0


@dataclass
class CalibrationResult:
    """What `calibrate` learned: the config overlay to write as YAML, and the held-out validation report."""

    overlay: dict
    report: dict
    model: ModelConfig
    weights: dict[str, float]
    train_periods: list[str]
    validation_periods: list[str]
    warnings: list[str] = field(default_factory=list)
    forecast: ForecastConfig | None = None


# ----------------------------------------------------------------------------- weights


@dataclass
class Evidence:
    """Per metric: the raw (>= 0) weight, the signed evidence, its 95% interval, and the directions learned."""

    raw: dict[str, float]
    value: dict[str, float | None]
    interval: dict[str, list[float] | None]
    turned: list[str]
    zeroed: list[str]


def _directions(names: list[str], value: dict, interval: dict) -> Evidence:
    raw, turned, zeroed = {}, [], []
    for name in names:
        v, ci = value.get(name), interval.get(name)
        if v is None or not math.isfinite(v):
            raw[name] = 0.0
        elif v >= 0:
            raw[name] = v
        elif ci is not None and ci[1] < 0:  # clearly the other way: turn the rule around
            raw[name] = -v
            turned.append(name)
        else:
            raw[name] = 0.0
            zeroed.append(name)
    return Evidence(raw, value, interval, turned, zeroed)


def correlation_weights(scored: pd.DataFrame, model: ModelConfig) -> Evidence:
    """Correlation of each metric score with retention (method 1, seed 001), with its interval."""
    retained = 1.0 - scored["churned"].to_numpy(dtype="float64")
    value, interval = {}, {}
    z_value = interval_z(len(model.metrics))
    repeats = len(scored) / max(1, scored["account_id"].nunique())
    for metric in model.metrics:
        x = scored[f"m_{metric.name}"].to_numpy(dtype="float64", na_value=np.nan)
        ok = ~np.isnan(x)
        r = None
        if ok.sum() > 2 and np.std(x[ok]) > 0 and np.std(retained[ok]) > 0:
            r = float(np.corrcoef(x[ok], retained[ok])[0, 1])
        value[metric.name] = r
        independent = int(ok.sum() / repeats)
        ci = correlation_interval(r, independent, z_value) if r is not None and math.isfinite(r) else None
        interval[metric.name] = list(ci) if ci else None
    return _directions([mt.name for mt in model.metrics], value, interval)


def logistic_weights(scored: pd.DataFrame, model: ModelConfig) -> Evidence:
    """Class-weighted logistic regression of retention on metric scores (method 2, seed 001), per score point."""
    names = [mt.name for mt in model.metrics]
    x = scored[[f"m_{n}" for n in names]].to_numpy(dtype="float64", na_value=np.nan)
    y = 1 - scored["churned"].to_numpy(dtype="int64")
    mean = np.nanmean(np.where(np.isnan(x).all(axis=0), 0.0, x), axis=0)
    x = np.where(np.isnan(x), mean, x)
    std = x.std(axis=0)
    usable = std > 0
    value: dict[str, float | None] = {n: None for n in names}
    interval: dict[str, list[float] | None] = {n: None for n in names}
    if usable.any():
        z = (x[:, usable] - mean[usable]) / std[usable]
        lr = LogisticRegression(class_weight="balanced", C=LOGISTIC_C, max_iter=2000).fit(z, y)
        counts = np.bincount(y, minlength=2)
        sample_weight = len(y) / (2.0 * counts[y])  # what class_weight="balanced" uses
        repeats = len(scored) / max(1, scored["account_id"].nunique())
        ci = logistic_intervals(z, y, lr.coef_[0], float(lr.intercept_[0]), sample_weight, LOGISTIC_C,
                                interval_z(len(names)), repeats)
        for j, name in enumerate(np.asarray(names)[usable]):
            scale = std[usable][j]
            value[name] = float(lr.coef_[0][j] / scale)  # per point of metric score
            interval[name] = [float(ci[j, 0] / scale), float(ci[j, 1] / scale)]
    return _directions(names, value, interval)


def normalise_weights(raw: dict[str, float]) -> dict[str, float]:
    """Weights summing to exactly 1 after rounding to WEIGHT_DECIMALS (remainder to the largest)."""
    total = sum(raw.values())
    if total <= 0:
        raise InsufficientHistoryError(
            "no metric's score is related to retention in the training part; "
            "check the history's churned column and the metric inputs"
        )
    scale = 10**WEIGHT_DECIMALS
    units = {k: round(v / total * scale) for k, v in raw.items()}
    largest = max(units, key=lambda k: (units[k], raw[k]))
    units[largest] += scale - sum(units.values())
    return {k: u / scale for k, u in units.items()}


def reweighted(model: ModelConfig, weights: dict[str, float], turned: list[str]) -> ModelConfig:
    """The model with the learned weights, and the rules of the `turned` metrics turned around."""
    data = model.model_dump()
    for metric in data["metrics"]:
        metric["weight"] = weights[metric["name"]]
        if metric["name"] in turned:
            metric["rule"] = turned_around(metric["rule"])
    return ModelConfig.model_validate(data)


# ----------------------------------------------------------------------------- probability map


def fit_probability_map(score: np.ndarray, churned: np.ndarray, kind: str = "platt") -> FittedModel:
    """Composite score -> churn probability, in the form `engine.scoring` applies for `method: fitted`."""
    if kind == "platt":
        cal = m.PlattCalibrator().fit(score, churned)
        return FittedModel(kind="platt", coef=[round(cal.coef_, 8)], intercept=round(cal.intercept_, 8))
    if kind == "isotonic":
        ok = ~np.isnan(score)
        iso = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0.0, y_max=1.0)
        iso.fit(score[ok], churned[ok])
        xs = [round(float(v), 4) for v in iso.X_thresholds_]
        ys = [round(float(v), 6) for v in iso.y_thresholds_]
        if len(xs) < 2:  # a flat map still needs two knots
            xs, ys = [0.0, 100.0], [ys[0], ys[0]]
        return FittedModel(kind="isotonic", x=xs, y=ys)
    raise ValueError(f"probability map must be one of {PROBABILITY_MAPS}, got {kind!r}")


# ----------------------------------------------------------------------------- thresholds


def _risk_boundary(model: ModelConfig) -> tuple[int, float]:
    """(number of at-risk bands, the score where the first not-at-risk band starts)."""
    flags = [b.at_risk for b in model.bands]
    k = sum(flags)
    if k == 0:
        raise ValueError("model.bands: no band has `at_risk: true`, so there is nothing to tune to a recall")
    if flags != [True] * k + [False] * (len(flags) - k) or k == len(flags):
        raise ValueError("model.bands: the at-risk bands must be the lowest bands, with at least one band above them")
    return k, model.bands[k].min


def _remap(value: float, old: float, new: float) -> float:
    """Piecewise-linear map of 0-100 sending `old` to `new` (0 and 100 stay put)."""
    if value <= old:
        return value * new / old if old > 0 else value
    return new + (value - old) * (100.0 - new) / (100.0 - old)


def with_boundary(model: ModelConfig, new_boundary: int) -> ModelConfig:
    """The model with every threshold moved so the at-risk boundary is `new_boundary` (module docstring, step 4)."""
    k, old = _risk_boundary(model)
    data = model.model_dump()
    mins = [0] + [int(round(_remap(b.min, old, new_boundary))) for b in model.bands[1:]]
    mins[k] = new_boundary
    for i in range(1, len(mins)):  # strictly increasing integers after rounding
        mins[i] = max(mins[i], mins[i - 1] + 1)
    if mins[-1] > 100:
        raise ValueError(f"at-risk boundary {new_boundary} leaves no room for the bands above it")
    for i, band in enumerate(data["bands"]):
        band["min"] = float(mins[i])
        band["max"] = float(mins[i + 1] - 1) if i + 1 < len(mins) else 100.0

    names = [b.name for b in model.bands]

    def move(thresholds: dict) -> dict:
        """Remapped override minimums, clamped so the overridden bands stay strictly ordered."""
        moved = {name: int(round(_remap(v, old, new_boundary))) for name, v in thresholds.items()}
        row = list(mins)
        for name, v in moved.items():
            row[names.index(name)] = v
        out = {}
        for i in range(1, len(row)):
            if names[i] not in moved:
                continue
            upper = row[i + 1] - 1 if i + 1 < len(row) else 100
            value = min(max(row[i], row[i - 1] + 1), upper)
            if value <= row[i - 1]:  # squeezed out at an extreme boundary: the override cannot apply
                row[i] = mins[i]
                continue
            row[i] = value
            out[names[i]] = float(value)
        return out

    for seg in data["segments"].values():
        seg["thresholds"] = move(seg["thresholds"])
    for stage in data["lifecycle"]["stages"]:
        stage["thresholds"] = move(stage["thresholds"])
    if data["lifecycle"].get("renewal_window"):
        data["lifecycle"]["renewal_window"]["thresholds"] = move(data["lifecycle"]["renewal_window"]["thresholds"])
    return ModelConfig.model_validate(data)


class BandFlags:
    """At-risk flags of many candidate threshold sets, without re-scoring (the tuning loop's hot path).

    Thresholds change only the band step: the score, confidence, lifecycle
    stage, renewal window and CSM sentiment shift do not depend on them. So
    the snapshots are scored once, and each candidate's flags come from the
    scorer's own `band_minimums` and the CSM rule of `engine.scoring` (shift
    by at most `max_tiers`, never past the ends, insufficient data never
    moved). A test checks the flags equal the full scorer's for tuned models.
    """

    def __init__(self, snapshots: list[Snapshot], model: ModelConfig):
        scored = score_snapshots(snapshots, model)
        self.features = pd.concat([snap.features for snap in snapshots], ignore_index=True)
        self.as_of = scored["as_of"].to_numpy()
        self.churned = scored["churned"].to_numpy(dtype="int64")
        self.score = scored["score"].to_numpy(dtype="float64")
        self.stage = scored["lifecycle_stage"].reset_index(drop=True)
        self.renewal = scored["in_renewal_window"].to_numpy(dtype=bool)
        self.insufficient = (scored["band"] == model.insufficient_band).to_numpy(dtype=bool)
        csm = model.csm_override
        self.shift = np.zeros(len(scored), dtype=np.int64)
        if csm.column in self.features.columns:
            shifts = {str(k).lower(): v for k, v in csm.shifts.items()}
            raw = text_column(self.features, csm.column).reset_index(drop=True).map(shifts)
            self.shift = np.clip(raw.to_numpy(dtype="float64", na_value=0.0), -csm.max_tiers, csm.max_tiers).astype(np.int64)

    def flagged(self, model: ModelConfig) -> np.ndarray:
        mins = HealthScorer(model).band_minimums(self.features, self.stage, self.renewal)
        last = len(model.bands) - 1
        with np.errstate(invalid="ignore"):
            idx = np.clip((self.score[:, None] >= mins).sum(axis=1) - 1, 0, last)
        if model.csm_override.enabled and model.csm_override.max_tiers > 0:
            idx = np.clip(idx + self.shift, 0, last)
        risky = np.array([b.at_risk for b in model.bands])
        return risky[idx] & ~self.insufficient

    def periods(self, dates=None) -> np.ndarray:
        return np.ones(len(self.as_of), dtype=bool) if dates is None else np.isin(self.as_of, np.asarray(dates))

    def worst_recall(self, flagged: np.ndarray, rows: np.ndarray) -> float:
        """The lowest recall over the snapshots (within `rows`) that have churners."""
        churners = rows & (self.churned == 1)
        if not churners.any():
            return 0.0
        caught = pd.Series(flagged[churners]).groupby(self.as_of[churners]).mean()
        return float(caught.min())


def tune_boundary(flags: BandFlags, model: ModelConfig, target_recall: float,
                  dates=None) -> tuple[ModelConfig, float]:
    """Lowest integer at-risk boundary whose bands reach `target_recall` in every snapshot (binary search).

    Every snapshot, not just the pooled period: a RevOps admin reads the
    result as "Red would have caught at least 75% of the churners in each
    past quarter", and a quarter with easy churners must not hide a quarter
    with hard ones. Recall can only grow as the boundary rises (every
    threshold moves up with it), so the search is exact. If even the highest
    boundary misses the target, that boundary is returned with its recall.
    `dates` restricts the tuning to those snapshots.
    """
    k, _ = _risk_boundary(model)
    lo, hi = k, 100 - (len(model.bands) - k) + 1  # room for one point per band above
    rows = flags.periods(dates)

    def recall_at(boundary: int) -> tuple[ModelConfig, float]:
        candidate = with_boundary(model, boundary)
        return candidate, flags.worst_recall(flags.flagged(candidate), rows)

    best = recall_at(hi)
    if best[1] < target_recall:
        return best
    while lo < hi:
        mid = (lo + hi) // 2
        cand = recall_at(mid)
        if cand[1] >= target_recall:
            hi, best = mid, cand
        else:
            lo = mid + 1
    if best[0].bands[k].min != hi:
        best = recall_at(hi)
    return best


CONFIGURED = "as configured"
WITHOUT_CSM = "without the CSM sentiment override"
WITHOUT_OVERRIDES = "without segment/lifecycle threshold overrides"
WITHOUT_BOTH = "without the CSM override and threshold overrides"
#: a variant must beat the configured band rules by this much precision to replace them
RULE_CHANGE_MIN_GAIN = 0.02


def without_threshold_overrides(model: ModelConfig) -> ModelConfig:
    """Segment, lifecycle and renewal-window thresholds set to the base bands' (neutral, still expressible
    in an overlay, which cannot delete a key)."""
    base_min = {b.name: b.min for b in model.bands}
    data = model.model_dump()
    for seg in data["segments"].values():
        seg["thresholds"] = {name: base_min[name] for name in seg["thresholds"]}
    for stage in data["lifecycle"]["stages"]:
        stage["thresholds"] = {}
    if data["lifecycle"].get("renewal_window"):
        window = data["lifecycle"]["renewal_window"]
        window["thresholds"] = {name: base_min[name] for name in window["thresholds"]}
    return ModelConfig.model_validate(data)


def _has_threshold_overrides(model: ModelConfig) -> bool:
    window = model.lifecycle.renewal_window
    return (any(seg.thresholds for seg in model.segments.values())
            or any(st.thresholds for st in model.lifecycle.stages)
            or bool(window and window.thresholds))


def choose_band_rules(flags: BandFlags, model: ModelConfig, target_recall: float):
    """Keep the CSM override and threshold overrides only if they help (seed 001, "Refine Model").

    Each variant's at-risk boundary is tuned to the target recall on the
    training period; the variant flagging churn with the best precision there
    wins, and the configured rules are kept unless another variant beats them
    by RULE_CHANGE_MIN_GAIN. Returns (label, model, {label: precision}).
    """
    variants = {CONFIGURED: model}
    csm_off = model.model_copy(update={"csm_override": model.csm_override.model_copy(update={"enabled": False})})
    if model.csm_override.enabled:
        variants[WITHOUT_CSM] = csm_off
    if _has_threshold_overrides(model):
        variants[WITHOUT_OVERRIDES] = without_threshold_overrides(model)
        if model.csm_override.enabled:
            variants[WITHOUT_BOTH] = without_threshold_overrides(csm_off)
    if len(variants) == 1:
        return CONFIGURED, model, {}
    precision = {}
    for label, variant in variants.items():
        tuned, _ = tune_boundary(flags, variant, target_recall)
        precision[label] = m.confusion(flags.churned, flags.flagged(tuned))["precision"] or 0.0
    best = max(precision, key=precision.get)
    if precision[best] < precision[CONFIGURED] + RULE_CHANGE_MIN_GAIN:
        best = CONFIGURED
    return best, variants[best], precision


def recall_margin(flags: BandFlags, dates: list, model: ModelConfig, target_recall: float, horizon: int) -> float:
    """How much recall a boundary tuned on the past loses on the next `horizon` snapshots (walk-forward).

    A boundary tuned to exactly the target on the training period tends to
    miss it later when the book changes (churners move up the score range as
    the weakest accounts leave). Inside the training period, the split is
    repeated once: tune on all but the last `horizon` training snapshots,
    measure the pooled recall on those; the shortfall (never negative) is
    added to the target for the final tuning. (Pooled, not worst-snapshot:
    the final tuning already asks every snapshot to reach the target, and
    stacking two worst cases overshoots recall at the cost of precision.)
    """
    inner = min(horizon, len(dates) - 1)
    if inner < 1:
        return 0.0
    tuned, _ = tune_boundary(flags, model, target_recall, dates[:-inner])
    ahead = flags.periods(dates[-inner:])
    recall = m.confusion(flags.churned[ahead], flags.flagged(tuned)[ahead])["recall"]
    shortfall = max(0.0, target_recall - recall) if recall is not None else 0.0
    return max(shortfall, recall_trend_loss(flags, dates, model, target_recall, horizon))


def recall_trend_loss(flags: BandFlags, dates: list, model: ModelConfig, target_recall: float, horizon: int) -> float:
    """Recall a steady decline across the training snapshots would cost by the middle of the validation period.

    At the boundary tuned on the whole training period, fit a line to each
    snapshot's recall (snapshots are evenly spaced); a falling line projected
    (horizon + 1) / 2 snapshots past the last training one gives the loss.
    A flat or rising line costs nothing. Needs three snapshots to see a trend.
    """
    if len(dates) < 3:
        return 0.0
    tuned, _ = tune_boundary(flags, model, target_recall)
    flagged = flags.flagged(tuned)
    recalls = []
    for d in dates:
        rows = flags.periods([d]) & (flags.churned == 1)
        recalls.append(flagged[rows].mean() if rows.any() else np.nan)
    recalls = np.asarray(recalls, dtype="float64")
    ok = ~np.isnan(recalls)
    if ok.sum() < 3:
        return 0.0
    slope = np.polyfit(np.flatnonzero(ok).astype("float64"), recalls[ok], 1)[0]
    return max(0.0, -float(slope)) * (horizon + 1) / 2.0


@dataclass
class BoundaryChoice:
    """The at-risk boundary chosen under the limits, with what it reaches on the training part."""

    model: ModelConfig
    boundary: float
    worst_recall: float
    recall: float | None
    precision: float | None
    at_risk_share: float
    met_target: bool
    warning: str | None = None


def _measure(flags: BandFlags, model: ModelConfig, boundary: int):
    candidate = with_boundary(model, boundary)
    flagged = flags.flagged(candidate)
    c = m.confusion(flags.churned, flagged)
    return candidate, flagged, c["recall"], c["precision"], float(flagged.mean())


def tune_within_limits(flags: BandFlags, model: ModelConfig, aim: float, target_recall: float,
                       max_share: float, min_lift: float = MIN_PRECISION_LIFT) -> BoundaryChoice:
    """The recall-tuned boundary (`tune_boundary`), lowered until the at-risk share and precision limits hold.

    A higher boundary flags a superset of the accounts, so the share only
    grows with it: every boundary that keeps the share limit lies at or below
    the first that breaks it. Among those, the one with the highest training
    recall whose precision is at least `min_lift` x the base rate is taken;
    if none reaches that precision, the one with the best precision, and the
    warning says so.
    """
    base_rate = float(flags.churned.mean()) if len(flags.churned) else 0.0
    min_precision = min_lift * base_rate
    rows = flags.periods()
    tuned, worst = tune_boundary(flags, model, aim)
    k, _ = _risk_boundary(tuned)
    top = int(tuned.bands[k].min)
    _, flagged, recall, precision, share = _measure(flags, model, top)
    if share <= max_share and (precision or 0.0) >= min_precision:
        return BoundaryChoice(tuned, top, worst, recall, precision, share, worst >= aim)
    lo = k
    candidates = []
    for boundary in range(top - 1, lo - 1, -1):
        cand, flagged, recall_b, precision_b, share_b = _measure(flags, model, boundary)
        if share_b > max_share:
            continue
        candidates.append((boundary, cand, flagged, recall_b or 0.0, precision_b, share_b))
    feasible = [c for c in candidates if (c[4] or 0.0) >= min_precision]
    if feasible:
        boundary, cand, flagged, recall_b, precision_b, share_b = max(feasible, key=lambda c: (c[3], -c[0]))
        why = (f"the at-risk share limit ({max_share:.0%}) binds" if share > max_share
               else f"precision would fall below {min_lift:g}x the base rate ({min_precision:.1%})")
    elif candidates:
        boundary, cand, flagged, recall_b, precision_b, share_b = max(candidates, key=lambda c: (c[4] or 0.0, c[3]))
        why = (f"no boundary within the at-risk share limit ({max_share:.0%}) reaches precision "
               f"{min_lift:g}x the base rate ({min_precision:.1%}); the most precise one is used")
    else:
        cand, flagged, recall_b, precision_b, share_b = _measure(flags, model, lo)
        boundary = lo
        why = f"even the lowest boundary puts {share_b:.0%} of the book at risk (limit {max_share:.0%})"
    worst_b = flags.worst_recall(flagged, rows)
    warning = (f"target recall {target_recall:.0%} not reached within --max-at-risk-share {max_share:.0%} and "
               f"precision >= {min_lift:g}x the base rate: at-risk boundary {boundary} reaches recall "
               f"{recall_b:.1%} on the training part (at-risk share {share_b:.1%}, precision "
               f"{(precision_b or 0.0):.1%}, base rate {base_rate:.1%}) - {why}")
    return BoundaryChoice(cand, boundary, worst_b, recall_b, precision_b, share_b, False, warning)


# ----------------------------------------------------------------------------- forecast


def deal_rows(frames: HistoryFrames, scored: pd.DataFrame, model: ModelConfig,
              prior: pd.DataFrame | None = None) -> pd.DataFrame:
    """Open deals of the scored snapshots: CRM probability, the account's score and delta_30d, the outcome.

    An account with insufficient data has no score here (the forecast leaves
    its deals alone). The outcome is `won` when given, else `won_amount > 0`.
    """
    from healthsync.engine.rules import _boolean, numeric_column

    opps = frames.opportunities_history
    parts = []
    for as_of, with_trends in snapshot_trends(scored, model.trend_stable_within, prior):
        deals = opps[opps["as_of"] == as_of]
        if not len(deals):
            continue
        if "is_closed" in deals.columns:
            deals = deals[~(_boolean(deals, "is_closed") == 1.0)]
        accounts = with_trends.drop_duplicates("account_id", keep="last").set_index("account_id")
        score = accounts["score"].where(accounts["band"] != model.insufficient_band)
        if "won" in deals.columns:
            won = numeric_column(deals, "won")
        else:
            won = (numeric_column(deals, "won_amount") > 0).astype("float64")
        parts.append(pd.DataFrame({
            "base": numeric_column(deals, "probability"),
            "score": score.reindex(deals["account_id"]).to_numpy(dtype="float64", na_value=np.nan),
            "delta": accounts["delta_30d"].reindex(deals["account_id"]).to_numpy(dtype="float64", na_value=np.nan),
            "won": won,
        }))
    if not parts:
        return pd.DataFrame({"base": [], "score": [], "delta": [], "won": []})
    return pd.concat(parts, ignore_index=True)


def _score_history(scored: pd.DataFrame) -> pd.DataFrame:
    """Scores in the shape `compute_trends` reads as history."""
    return scored[["account_id", "score", "band"]].assign(scored_at=scored["as_of"].to_numpy())


# ----------------------------------------------------------------------------- public


def _overlay(base: ModelConfig, tuned: ModelConfig, weights: dict[str, float], turned: list[str],
             forecast: dict | None) -> dict:
    """The YAML overlay: only what calibrate changed (weights, rules turned around, bands, thresholds,
    the fitted map, the forecast map)."""
    dumped = tuned.model_dump(mode="json", exclude_none=True)
    model: dict = {}
    if tuned.method != base.method:
        model["method"] = tuned.method
    model["metric_weights"] = dict(weights)
    if turned:
        model["metric_rules"] = {mt["name"]: mt["rule"] for mt in dumped["metrics"] if mt["name"] in turned}
    model["bands"] = dumped["bands"]
    segments = {name: {"thresholds": seg["thresholds"]} for name, seg in dumped["segments"].items() if seg["thresholds"]}
    if segments:
        model["segments"] = segments
    if base.lifecycle.stages or base.lifecycle.renewal_window:
        model["lifecycle"] = dumped["lifecycle"]  # stages are a list: an overlay replaces it whole
    if tuned.csm_override.enabled != base.csm_override.enabled:
        model["csm_override"] = {"enabled": tuned.csm_override.enabled}
    fitted = dumped["fitted"]
    model["fitted"] = {k: v for k, v in fitted.items() if v not in ([], None)
                       and not (k == "intercept" and fitted.get("kind") == "isotonic")}
    out = {"model": model}
    if forecast is not None:
        out["forecast"] = forecast
    return out


def _configured_probability_map(snapshots: list[Snapshot], configured: ModelConfig):
    """The configured model's score -> churn probability map, fitted on the training part (None when it
    has its own fitted scores, or the training part cannot support a fit)."""
    if configured.method == "fitted":
        return None
    scored = score_snapshots(snapshots, configured)
    try:
        return m.PlattCalibrator().fit(scored["score"].to_numpy(dtype="float64"),
                                       scored["churned"].to_numpy(dtype="int64"))
    except ValueError:
        return None


def calibrate(
    history,
    model: ModelConfig,
    forecast: ForecastConfig | None = None,
    method: str = "correlation",
    target_recall: float = 0.75,
    probability: str = "platt",
    holdout_share: float = DEFAULT_HOLDOUT,
    min_churn_events: int = MIN_CHURN_EVENTS,
    split: str = "auto",
    seed: int = DEFAULT_SEED,
    max_at_risk_share: float = DEFAULT_MAX_AT_RISK_SHARE,
) -> CalibrationResult:
    """Learn on the training part of the history, validate on the held-out part (module docstring)."""
    if method not in METHODS:
        raise ValueError(f"calibrate: method must be one of {METHODS}, got {method!r}")
    if probability not in PROBABILITY_MAPS:
        raise ValueError(f"calibrate: probability must be one of {PROBABILITY_MAPS}, got {probability!r}")
    if not 0 < target_recall <= 1:
        raise ValueError(f"calibrate: target_recall must be in (0, 1], got {target_recall}")
    if not 0 < max_at_risk_share <= 1:
        raise ValueError(f"calibrate: max_at_risk_share must be in (0, 1], got {max_at_risk_share}")
    if split not in SPLITS:
        raise ValueError(f"calibrate: split must be one of {SPLITS}, got {split!r}")
    frames = history_frames(history)
    parts = split_history(frames, split, holdout_share, seed, min_churn_events)
    warnings: list[str] = []
    base = model
    if base.method not in ("weighted", "fitted"):
        warnings.append(f"model.method {base.method!r}: calibrated as 'weighted' (the method weights are learned for)")
        base = base.model_copy(update={"method": "weighted"})
    if any(seg.weights for seg in base.segments.values()):
        warnings.append("segment weight overrides are kept as configured; calibrate learns the global weights only")

    train = build_snapshots(parts.train, base)
    val = build_snapshots(parts.validation, base)

    # 2. weights and directions from the base model's metric scores on the training part
    weighted_base = base.model_copy(update={"method": "weighted", "fitted": None})
    train_scored = score_snapshots(train, weighted_base)
    evidence = (correlation_weights if method == "correlation" else logistic_weights)(train_scored, base)
    weights = normalise_weights(evidence.raw)
    weighted = reweighted(weighted_base, weights, evidence.turned)
    for name in evidence.turned:
        lo, hi = evidence.interval[name]
        warnings.append(f"{name} runs the other way than configured (evidence {evidence.value[name]:.4f}, 95% "
                        f"interval {lo:.4f} to {hi:.4f}): its rule is turned around in the overlay (model.metric_rules)")

    # 3. the churn-probability map (or, for `fitted`, the regression on raw values)
    if method == "fitted":
        from healthsync.engine.regression import fit_regression

        features = pd.concat([s.features for s in train], ignore_index=True)
        churned = np.concatenate([s.churned for s in train])
        candidate = weighted.model_copy(update={"fitted": fit_regression(features, churned, weighted),
                                                "method": "fitted"})
    else:
        composite = score_snapshots(train, weighted)
        fitted = fit_probability_map(composite["score"].to_numpy(dtype="float64"),
                                     composite["churned"].to_numpy(dtype="int64"), probability)
        candidate = weighted.model_copy(update={"fitted": fitted, "method": base.method})

    # 4. which band rules earn their place, then the at-risk boundary within the limits
    flags = BandFlags(train, candidate)
    label, candidate, choices = choose_band_rules(flags, candidate, target_recall)
    if label != CONFIGURED:
        warnings.append(
            f"band rules: {label} flags churn more precisely on the training part "
            f"({choices[label]:.1%} vs {choices[CONFIGURED]:.1%} precision at the target recall); "
            "the overlay applies it - review before use"
        )
    margin = 0.0
    if parts.kind == "time":
        train_dates_np = [np.datetime64(d) for d in parts.train.as_of_dates]
        margin = recall_margin(flags, train_dates_np, candidate, target_recall, len(val))
    aim = min(1.0, target_recall + margin)
    choice = tune_within_limits(flags, candidate, aim, target_recall, max_at_risk_share)
    tuned = choice.model
    if choice.warning:
        warnings.append(choice.warning)
    elif not choice.met_target:
        warnings.append(f"target recall {target_recall:.0%} not reachable on the training part "
                        f"in every snapshot (worst {choice.worst_recall:.1%} with the highest at-risk boundary)")

    # 5. the forecast map, fitted on the training part's deals and judged on the held-out deals
    prior = _score_history(score_snapshots(train, tuned)) if parts.kind == "time" else None
    eval_forecast, forecast_overlay, fitted_forecast = forecast, None, None
    if (forecast is not None and parts.train.opportunities_history is not None
            and parts.validation.opportunities_history is not None):
        deals = deal_rows(parts.train, score_snapshots(train, tuned), tuned)
        try:
            fitted_forecast = fit_forecast(deals["base"], deals["score"], deals["delta"], deals["won"])
            eval_forecast = forecast.model_copy(update={"enabled": True, "method": "fitted",
                                                        "fitted": fitted_forecast})
        except ForecastFitError as e:
            warnings.append(f"forecast: nothing fitted ({e}); the configured forecast settings stay")

    # 6. the held-out report, and the configured model on the same footing
    report = evaluate(parts.validation, val, tuned, eval_forecast, prior_scores=prior)
    final_forecast = forecast
    if fitted_forecast is not None and not report.get("forecast"):
        warnings.append("forecast: the held-out part has no deals with a won amount to judge the fitted map on; "
                        "the configured forecast settings stay")
    if fitted_forecast is not None and report.get("forecast"):
        fc = report["forecast"]
        lowered = (fc["mape_before"] is not None and fc["mape_after"] is not None
                   and fc["mape_after"] < fc["mape_before"] and fc["mae_after"] <= fc["mae_before"])
        fc["enabled"] = lowered
        fc["fitted"] = fitted_forecast.model_dump(mode="json")
        if lowered:
            forecast_overlay = {"enabled": True, "method": "fitted", "fitted": fitted_forecast.model_dump(mode="json")}
            final_forecast = eval_forecast
        else:
            forecast_overlay = {"enabled": False}
            final_forecast = forecast.model_copy(update={"enabled": False})
            def num(value, fmt):
                return "n/a" if value is None else format(value, fmt)

            warnings.append(
                f"forecast: the fitted adjustment did not lower held-out error (MAPE {num(fc['mape_before'], '.1f')}% "
                f"-> {num(fc['mape_after'], '.1f')}%, MAE {num(fc['mae_before'], ',.0f')} -> "
                f"{num(fc['mae_after'], ',.0f')}); the overlay sets forecast.enabled: false")
    configured = model
    if model.method == "fitted" and model.fitted is None:  # nothing fitted yet: the configured scores are weighted
        configured = model.model_copy(update={"method": "weighted"})
    configured_prior = _score_history(score_snapshots(train, configured)) if parts.kind == "time" else None
    baseline = evaluate(parts.validation, val, configured, forecast,
                        prob_map=_configured_probability_map(train, configured), prior_scores=configured_prior)
    k, _ = _risk_boundary(tuned)
    report["calibration"] = m.json_safe({
        "method": method,
        "probability_map": "regression on raw values" if method == "fitted" else probability,
        "split": parts.kind,
        "split_description": parts.description,
        "train_periods": parts.train_periods,
        "validation_periods": parts.validation_periods,
        "train_rows": int(len(train_scored)),
        "train_churn_events": int(train_scored["churned"].sum()),
        "weights_before": {mt.name: mt.weight for mt in model.metrics},
        "weights_after": weights,
        "evidence": evidence.value,
        "evidence_interval": evidence.interval,
        "evidence_kind": ("correlation with retention" if method == "correlation"
                          else "logistic coefficient per score point"),
        "turned_around": evidence.turned,
        "zeroed": evidence.zeroed,
        "target_recall": target_recall,
        "recall_margin": margin,
        "max_at_risk_share": max_at_risk_share,
        "min_precision_lift": MIN_PRECISION_LIFT,
        "train_recall": choice.recall,
        "train_precision": choice.precision,
        "train_at_risk_share": choice.at_risk_share,
        "train_worst_period_recall": choice.worst_recall,
        "at_risk_boundary": tuned.bands[k].min,
        "band_rules": label,
        "band_rule_precision": choices,
        "at_risk_bands": at_risk_bands(tuned),
        "warnings": warnings,
    })
    report["baseline"] = {key: baseline.get(key) for key in
                          ("auc", "pr_auc", "brier", "accuracy", "precision", "recall", "f1", "at_risk_share",
                           "insufficient_share", "probability_method", "forecast")}
    names = {"champion": "calibrated", "challenger": "baseline", "tie": "tie", None: None}
    report["improvement"] = {key: names[who] for key, who in compare(report, baseline).items()}
    report["warnings"] = list(warnings) + list(report.get("warnings") or [])
    return CalibrationResult(
        overlay=_overlay(model, tuned, weights, evidence.turned, forecast_overlay),
        report=report,
        model=tuned,
        weights=weights,
        train_periods=parts.train_periods,
        validation_periods=parts.validation_periods,
        warnings=warnings,
        forecast=final_forecast,
    )
