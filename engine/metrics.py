"""Classification and calibration metrics for validating the health model against outcomes.

Why a module of its own: the backtest, `calibrate` and the challenger comparison
must compute every number the same way, and each function here must give a
defined answer (`None`, never a crash or a silent 0) when a period has only one
class — a quarter with no churn is normal for a small book.

Conventions: `churned` is 0/1 (1 = the positive class, "did not renew");
`risk` is any number that grows with churn risk (e.g. `-score`, or a churn
probability). Targets quoted in the reports come from seed
000_caaf87bd3b38802c.txt (AUC-ROC > 0.7 to deploy, PR-AUC > 0.3, Brier < 0.15).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score


def _clean(y, risk) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype="float64")
    r = np.asarray(risk, dtype="float64")
    keep = ~(np.isnan(y) | np.isnan(r))
    return y[keep].astype(int), r[keep]


def _both_classes(y: np.ndarray) -> bool:
    return len(y) > 0 and 0 < int(y.sum()) < len(y)


def auc(churned, risk) -> float | None:
    """AUC-ROC of `risk` for churn; None when only one class is present."""
    y, r = _clean(churned, risk)
    return float(roc_auc_score(y, r)) if _both_classes(y) else None


def pr_auc(churned, risk) -> float | None:
    """Average precision (area under the precision-recall curve); the base rate is its floor."""
    y, r = _clean(churned, risk)
    return float(average_precision_score(y, r)) if _both_classes(y) else None


def brier(churned, probability) -> float | None:
    """Mean squared error of churn probabilities (0 is perfect; the base rate x (1 - base rate) is 'no skill')."""
    y, p = _clean(churned, probability)
    return float(brier_score_loss(y, p)) if len(y) else None


def confusion(churned, flagged) -> dict:
    """Flagged-at-risk vs churned: counts and accuracy, precision, recall, F1 (None when undefined)."""
    y = np.asarray(churned, dtype=bool)
    f = np.asarray(flagged, dtype=bool)
    tp = int((y & f).sum())
    fp = int((~y & f).sum())
    fn = int((y & ~f).sum())
    tn = int((~y & ~f).sum())
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if tp + fp + fn else None)
    return {
        "accuracy": (tp + tn) / n if n else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion": {"true_positive": tp, "false_positive": fp, "false_negative": fn, "true_negative": tn},
    }


def reliability_table(churned, probability, bins: int = 10) -> list[dict]:
    """Predicted vs observed churn by decile of predicted probability (the reliability diagram as rows)."""
    y, p = _clean(churned, probability)
    if not len(y):
        return []
    order = np.argsort(p, kind="stable")
    rows = []
    for i, idx in enumerate(np.array_split(order, min(bins, len(y)))):
        if not len(idx):
            continue
        rows.append(
            {
                "decile": i + 1,
                "n": int(len(idx)),
                "predicted_min": float(p[idx].min()),
                "predicted_max": float(p[idx].max()),
                "mean_predicted": float(p[idx].mean()),
                "observed_rate": float(y[idx].mean()),
            }
        )
    return rows


#: Score ranges of the retention table in seed 001_9b7515619717186a.txt ("Retention rate by health score range").
RETENTION_RANGES = ((90, 100.01, "90-100"), (80, 90, "80-89"), (70, 80, "70-79"), (60, 70, "60-69"),
                    (50, 60, "50-59"), (0, 50, "<50"))


def retention_by_score(score, churned) -> list[dict]:
    """Retention rate and sample size per score range, as in the table of seed 001."""
    s = np.asarray(score, dtype="float64")
    y = np.asarray(churned, dtype="float64")
    rows = []
    for lo, hi, label in RETENTION_RANGES:
        inside = (s >= lo) & (s < hi) & ~np.isnan(y)
        n = int(inside.sum())
        rows.append({"range": label, "n": n, "retention_rate": float(1 - y[inside].mean()) if n else None})
    return rows


def mape(actual, forecast) -> float | None:
    """Mean absolute percentage error in percent over periods with a non-zero actual (seed 000 formula)."""
    a = np.asarray(actual, dtype="float64")
    f = np.asarray(forecast, dtype="float64")
    keep = a != 0
    if not keep.any():
        return None
    return float(np.mean(np.abs((a[keep] - f[keep]) / a[keep])) * 100.0)


def mae(actual, forecast) -> float | None:
    a = np.asarray(actual, dtype="float64")
    f = np.asarray(forecast, dtype="float64")
    return float(np.mean(np.abs(a - f))) if len(a) else None


class PlattCalibrator:
    """Score -> churn probability, p = 1 / (1 + exp(-(intercept + coef x score))).

    Platt scaling (seed 000: "use Platt scaling for parametric calibration") on
    the composite health score. Unregularised in effect (large C): with one
    input there is nothing to shrink, and shrinking would bias the probabilities.
    """

    def __init__(self, C: float = 1e6):
        self.C = C

    def fit(self, score, churned) -> "PlattCalibrator":
        x, y = _clean_pair(score, churned)
        if not _both_classes(y):
            raise ValueError("Platt calibration needs both churned and retained accounts")
        lr = LogisticRegression(C=self.C, max_iter=1000)
        # Scores have one decimal, so a history of any size has at most ~1,000 distinct values: fit on
        # (value, outcome) pairs weighted by their counts - the same likelihood, far fewer rows.
        values, inverse = np.unique(x, return_inverse=True)
        churned = np.bincount(inverse, weights=y, minlength=len(values))
        total = np.bincount(inverse, minlength=len(values)).astype("float64")
        xs = np.concatenate([values, values])
        ys = np.concatenate([np.ones(len(values), dtype=int), np.zeros(len(values), dtype=int)])
        weights = np.concatenate([churned, total - churned])
        keep = weights > 0
        # scores on 0-100: centre and scale for a well-conditioned fit, then fold back into coef/intercept
        lr.fit(((xs[keep] - 50.0) / 10.0)[:, None], ys[keep], sample_weight=weights[keep])
        a = float(lr.coef_[0, 0]) / 10.0
        self.coef_ = a
        self.intercept_ = float(lr.intercept_[0]) - a * 50.0
        return self

    def predict(self, score) -> np.ndarray:
        return platt_probability(score, self.coef_, self.intercept_)


def platt_probability(score, coef: float, intercept: float) -> np.ndarray:
    z = intercept + coef * np.asarray(score, dtype="float64")
    return 1.0 / (1.0 + np.exp(-z))


def _clean_pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype="float64")
    y = np.asarray(y, dtype="float64")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep].astype(int)


def json_safe(value):
    """Recursively turn numpy/pandas scalars into plain Python and NaN/inf into None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (pd.Timestamp,)):
        return value.date().isoformat() if value == value.normalize() else value.isoformat()
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
