"""Calibrate: learn metric weights, band thresholds and a churn-probability map from outcomes.

Seeds: 001_9b7515619717186a.txt ("Data-Driven Model Development": weight each
metric by its correlation with retention — method 1 — or fit a logistic
regression — method 2; recalibrate thresholds), 000_caaf87bd3b38802c.txt
(time-based validation, Platt scaling / isotonic calibration).

Procedure, strictly time-ordered (never shuffled, so the model never trains
on the future):

1. Split the `as_of` snapshots: the earlier ones train, the last
   `holdout_share` of them validate.
2. Weights, from the training period's metric scores:
   - `correlation`: Pearson correlation of each metric score with retention
     (1 - churned) over the accounts where the metric is present; negatives
     and undefined correlations become 0; normalised to sum to 1.
   - `logistic`: class-weighted logistic regression of retention on the
     standardised metric scores (absent -> the training mean); each metric's
     coefficient is brought back to the 0-100 score scale (coef / std) so
     the weighted composite ranks accounts like the regression; negatives 0.
   Weights are rounded to 4 decimals and the rounding remainder given to the
   largest weight, so they sum to 1 well within the config's 1e-6 tolerance.
3. The churn-probability map on the new composite score of the training
   period: Platt (logistic on the score) or isotonic knots; stored in
   `model.fitted`, so `method: fitted` (health = 100 - 100 x p) works.
4. Band rules first: the CSM sentiment override and the segment / lifecycle
   threshold overrides are each tried off; a variant that flags churn with
   clearly better precision at the target recall on the training period
   replaces the configured rules (with a warning in the report).
   Then band thresholds on the training period: the boundary between the
   at-risk bands and the rest moves to the lowest integer score at which the
   at-risk bands catch `target_recall` of the churned accounts in every
   training snapshot (as the scorer really assigns bands: segment, lifecycle
   and CSM overrides included), plus a margin for the recall a boundary tuned
   on the past loses later (`recall_margin`). Every other threshold — the
   other bands', and segment / lifecycle / renewal-window overrides — moves
   with it through the same piecewise-linear map of 0-100, so their order and
   relative meaning ("SMB needs more to be Green") hold.
5. The validation report: the calibrated model on the held-out snapshots, in
   the shape of `engine.backtest.backtest`, plus the base model on the same
   snapshots for comparison.

`calibrate` refuses thin history with `InsufficientHistoryError` (fewer than
50 churn events in the training period, a single `as_of`, or a held-out
period without both outcomes).
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
from healthsync.engine.rules import text_column
from healthsync.engine.scoring import HealthScorer
from healthsync.engine.backtest import (
    HistoryFrames,
    Snapshot,
    at_risk_bands,
    build_snapshots,
    compare,
    evaluate,
    history_frames,
    score_snapshots,
)

MIN_CHURN_EVENTS = 50
WEIGHT_DECIMALS = 4
METHODS = ("correlation", "logistic")
PROBABILITY_MAPS = ("platt", "isotonic")


class InsufficientHistoryError(ValueError):
    """The history cannot support a calibration; the message says what is too thin."""


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


# ----------------------------------------------------------------------------- split


def _split(frames: HistoryFrames, holdout_share: float, min_churn_events: int):
    dates = frames.as_of_dates
    if len(dates) < 2:
        only = dates[0].date().isoformat() if dates else "none"
        raise InsufficientHistoryError(
            f"history has a single as_of snapshot ({only}); calibration needs at least two "
            "(it trains on the earlier snapshots and validates on the later ones)"
        )
    n_val = min(len(dates) - 1, max(1, round(len(dates) * holdout_share)))
    train, val = dates[:-n_val], dates[-n_val:]
    acc = frames.accounts_history
    train_churn = int(acc.loc[acc["as_of"].isin(train), "churned"].sum())
    if train_churn < min_churn_events:
        raise InsufficientHistoryError(
            f"the training period ({_span(train)}) has {train_churn} churn events; calibration needs at least "
            f"{min_churn_events} (add older snapshots or more accounts)"
        )
    val_y = acc.loc[acc["as_of"].isin(val), "churned"]
    if val_y.sum() == 0 or val_y.sum() == len(val_y):
        kind = "no churned account" if val_y.sum() == 0 else "no retained account"
        raise InsufficientHistoryError(
            f"the held-out period ({_span(val)}) has {kind}; it cannot validate the calibration"
        )
    return train, val


def _span(dates: list[pd.Timestamp]) -> str:
    first, last = dates[0].date().isoformat(), dates[-1].date().isoformat()
    return first if first == last else f"{first} to {last}"


# ----------------------------------------------------------------------------- weights


def correlation_weights(scored: pd.DataFrame, model: ModelConfig) -> tuple[dict[str, float], dict[str, float | None]]:
    """Raw (unnormalised, >= 0) weights = correlation of each metric score with retention (method 1, seed 001)."""
    retained = 1.0 - scored["churned"].to_numpy(dtype="float64")
    raw, corr = {}, {}
    for metric in model.metrics:
        x = scored[f"m_{metric.name}"].to_numpy(dtype="float64", na_value=np.nan)
        ok = ~np.isnan(x)
        r = None
        if ok.sum() > 2 and np.std(x[ok]) > 0 and np.std(retained[ok]) > 0:
            r = float(np.corrcoef(x[ok], retained[ok])[0, 1])
        corr[metric.name] = r
        raw[metric.name] = max(r, 0.0) if r is not None and math.isfinite(r) else 0.0
    return raw, corr


def logistic_weights(scored: pd.DataFrame, model: ModelConfig) -> tuple[dict[str, float], dict[str, float | None]]:
    """Raw weights from a class-weighted logistic regression of retention on metric scores (method 2, seed 001)."""
    names = [mt.name for mt in model.metrics]
    x = scored[[f"m_{n}" for n in names]].to_numpy(dtype="float64", na_value=np.nan)
    y = 1 - scored["churned"].to_numpy(dtype="int64")
    mean = np.nanmean(np.where(np.isnan(x).all(axis=0), 0.0, x), axis=0)
    x = np.where(np.isnan(x), mean, x)
    std = x.std(axis=0)
    usable = std > 0
    coef_scaled = np.zeros(len(names))
    if usable.any():
        z = (x[:, usable] - mean[usable]) / std[usable]
        lr = LogisticRegression(class_weight="balanced", max_iter=2000).fit(z, y)
        coef_scaled[usable] = lr.coef_[0] / std[usable]  # per point of metric score
    coefs = {n: (float(c) if u else None) for n, c, u in zip(names, coef_scaled, usable)}
    raw = {n: max(float(c), 0.0) for n, c in zip(names, coef_scaled)}
    return raw, coefs


def normalise_weights(raw: dict[str, float]) -> dict[str, float]:
    """Weights summing to exactly 1 after rounding to WEIGHT_DECIMALS (remainder to the largest)."""
    total = sum(raw.values())
    if total <= 0:
        raise InsufficientHistoryError(
            "no metric's score is positively related to retention in the training period; "
            "check the history's churned column and the metric inputs"
        )
    scale = 10**WEIGHT_DECIMALS
    units = {k: round(v / total * scale) for k, v in raw.items()}
    largest = max(units, key=lambda k: (units[k], raw[k]))
    units[largest] += scale - sum(units.values())
    return {k: u / scale for k, u in units.items()}


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


# ----------------------------------------------------------------------------- public


def _overlay(base: ModelConfig, tuned: ModelConfig, weights: dict[str, float]) -> dict:
    """The YAML overlay: only what calibrate changed (weights, bands, thresholds, the fitted map)."""
    dumped = tuned.model_dump(mode="json", exclude_none=True)
    model: dict = {}
    if tuned.method != base.method:
        model["method"] = tuned.method
    model["metric_weights"] = dict(weights)
    model["bands"] = dumped["bands"]
    segments = {name: {"thresholds": seg["thresholds"]} for name, seg in dumped["segments"].items() if seg["thresholds"]}
    if segments:
        model["segments"] = segments
    if base.lifecycle.stages or base.lifecycle.renewal_window:
        model["lifecycle"] = dumped["lifecycle"]  # stages are a list: an overlay replaces it whole
    if tuned.csm_override.enabled != base.csm_override.enabled:
        model["csm_override"] = {"enabled": tuned.csm_override.enabled}
    model["fitted"] = {k: v for k, v in dumped["fitted"].items() if v not in ([], None)}
    return {"model": model}


def calibrate(
    history,
    model: ModelConfig,
    forecast: ForecastConfig | None = None,
    method: str = "correlation",
    target_recall: float = 0.75,
    probability: str = "platt",
    holdout_share: float = 1 / 3,
    min_churn_events: int = MIN_CHURN_EVENTS,
) -> CalibrationResult:
    """Learn weights, thresholds and the probability map on the earlier snapshots; validate on the later."""
    if method not in METHODS:
        raise ValueError(f"calibrate: method must be one of {METHODS}, got {method!r}")
    if probability not in PROBABILITY_MAPS:
        raise ValueError(f"calibrate: probability must be one of {PROBABILITY_MAPS}, got {probability!r}")
    if not 0 < target_recall <= 1:
        raise ValueError(f"calibrate: target_recall must be in (0, 1], got {target_recall}")
    frames = history_frames(history)
    train_dates, val_dates = _split(frames, holdout_share, min_churn_events)
    warnings: list[str] = []
    base = model
    if base.method not in ("weighted", "fitted"):
        warnings.append(f"model.method {base.method!r}: calibrated as 'weighted' (the method weights are learned for)")
        base = base.model_copy(update={"method": "weighted"})
    if any(seg.weights for seg in base.segments.values()):
        warnings.append("segment weight overrides are kept as configured; calibrate learns the global weights only")

    snapshots = build_snapshots(frames, base)
    train = [s for s in snapshots if s.as_of in set(train_dates)]
    val = [s for s in snapshots if s.as_of in set(val_dates)]

    # 2. weights from the base model's metric scores on the training period
    weighted_base = base.model_copy(update={"method": "weighted", "fitted": None})
    train_scored = score_snapshots(train, weighted_base)
    raw, evidence = (correlation_weights if method == "correlation" else logistic_weights)(train_scored, base)
    weights = normalise_weights(raw)
    data = weighted_base.model_dump()
    for metric in data["metrics"]:
        metric["weight"] = weights[metric["name"]]
    weighted = ModelConfig.model_validate(data)

    # 3. probability map on the new composite score
    composite = score_snapshots(train, weighted)
    fitted = fit_probability_map(composite["score"].to_numpy(dtype="float64"),
                                 composite["churned"].to_numpy(dtype="int64"), probability)
    candidate = weighted.model_copy(update={"fitted": fitted, "method": base.method})

    # 4. which band rules earn their place, then thresholds to the target recall
    flags = BandFlags(train, candidate)
    label, candidate, choices = choose_band_rules(flags, candidate, target_recall)
    if label != CONFIGURED:
        warnings.append(
            f"band rules: {label} flags churn more precisely on the training period "
            f"({choices[label]:.1%} vs {choices[CONFIGURED]:.1%} precision at the target recall); "
            "the overlay applies it - review before use"
        )
    train_dates_np = [np.datetime64(d) for d in train_dates]
    margin = recall_margin(flags, train_dates_np, candidate, target_recall, len(val))
    aim = min(1.0, target_recall + margin)
    tuned, worst_recall = tune_boundary(flags, candidate, aim)
    train_recall = m.confusion(flags.churned, flags.flagged(tuned))["recall"]
    if worst_recall < aim:
        warnings.append(f"target recall {target_recall:.0%} not reachable on the training period "
                        f"in every snapshot (worst {worst_recall:.1%} with the highest at-risk boundary)")

    # 5. validation on the held-out snapshots
    report = evaluate(frames, val, tuned, forecast)
    configured = model
    if model.method == "fitted" and model.fitted is None:  # nothing fitted yet: the configured scores are weighted
        configured = model.model_copy(update={"method": "weighted"})
    baseline = evaluate(frames, val, configured, forecast)
    k, _ = _risk_boundary(tuned)
    report["calibration"] = m.json_safe({
        "method": method,
        "probability_map": probability,
        "train_periods": [d.date().isoformat() for d in train_dates],
        "validation_periods": [d.date().isoformat() for d in val_dates],
        "train_churn_events": int(train_scored["churned"].sum()),
        "weights_before": {mt.name: mt.weight for mt in model.metrics},
        "weights_after": weights,
        "evidence": evidence,
        "evidence_kind": "correlation with retention" if method == "correlation" else "logistic coefficient per score point",
        "target_recall": target_recall,
        "recall_margin": margin,
        "train_recall": train_recall,
        "train_worst_period_recall": worst_recall,
        "at_risk_boundary": tuned.bands[k].min,
        "band_rules": label,
        "band_rule_precision": choices,
        "at_risk_bands": at_risk_bands(tuned),
        "warnings": warnings,
    })
    report["baseline"] = {key: baseline.get(key) for key in
                          ("auc", "pr_auc", "brier", "accuracy", "precision", "recall", "f1", "forecast")}
    names = {"champion": "calibrated", "challenger": "baseline", "tie": "tie", None: None}
    report["improvement"] = {key: names[who] for key, who in compare(report, baseline).items()}
    return CalibrationResult(
        overlay=_overlay(model, tuned, weights),
        report=report,
        model=tuned,
        weights=weights,
        train_periods=[d.date().isoformat() for d in train_dates],
        validation_periods=[d.date().isoformat() for d in val_dates],
        warnings=warnings,
    )
