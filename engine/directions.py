"""Metrics that run the other way than configured: detected with a confidence interval, turned around.

Why: a configured rule says "more logins, more points". In some books a
metric really runs the other way (e.g. many support tickets may mean an
engaged customer). Giving such a metric weight 0 throws its evidence away;
giving its negative coefficient as a weight is impossible (weights are >= 0).
When the evidence is clear - the 95% interval of the metric's coefficient on
retention lies wholly below 0 - `calibrate` turns the rule around (its points
become 100 - points) and weights it by the size of its effect. A negative
coefficient whose interval includes 0 is no evidence either way: weight 0.

Intervals: Wald intervals from the logistic fit's information matrix
(`logistic_intervals`), or Fisher's z-transform for a correlation
(`correlation_interval`). Two corrections keep noise from turning a metric
around: the intervals are simultaneous over the model's metrics (Bonferroni:
each at 1 - 0.05 / number of metrics, `interval_z`), and a history that
repeats each account over several snapshots counts as only as many
independent observations as it has accounts (the standard errors grow by
sqrt(rows / accounts)).
"""

from __future__ import annotations

import math

import numpy as np

from scipy.stats import norm

FAMILY_CONFIDENCE = 0.95


def interval_z(n_metrics: int) -> float:
    """Normal quantile of a two-sided interval that holds for all `n_metrics` at once (Bonferroni)."""
    return float(norm.ppf(1.0 - (1.0 - FAMILY_CONFIDENCE) / (2.0 * max(1, n_metrics))))


def correlation_interval(r: float, n: int, z_value: float) -> tuple[float, float] | None:
    """Interval of a Pearson correlation from n independent pairs (Fisher z); None when n < 4 or |r| = 1."""
    if n < 4 or not -1 < r < 1:
        return None
    z, se = math.atanh(r), 1.0 / math.sqrt(n - 3)
    return math.tanh(z - z_value * se), math.tanh(z + z_value * se)


def logistic_intervals(z: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: float,
                       sample_weight: np.ndarray, c: float, z_value: float, repeats: float = 1.0) -> np.ndarray:
    """(n_features, 2) Wald intervals of the coefficients of an L2 logistic fit on `z`.

    `repeats`: rows per independent unit (account), which inflates the variance.
    The information matrix is X' W X with W = weight x p (1 - p) (X with an
    intercept column) plus the L2 penalty 1 / C on the coefficients, which is
    the curvature scikit-learn's objective has at its optimum.
    """
    x = np.column_stack([np.ones(len(z)), z])
    eta = intercept + z @ coef
    p = 0.5 * (1.0 + np.tanh(0.5 * eta))
    w = sample_weight * p * (1.0 - p)
    info = x.T @ (x * w[:, None])
    info[1:, 1:] += np.eye(len(coef)) / c
    se = np.sqrt(np.clip(np.diag(np.linalg.pinv(info))[1:], 0.0, None) * max(1.0, repeats))
    return np.column_stack([coef - z_value * se, coef + z_value * se])


def turned_around(rule: dict) -> dict:
    """The rule (as a config dict) giving 100 - its points: the metric's direction reversed."""
    rule = dict(rule)
    kind = rule["type"]
    if kind == "steps":
        rule["steps"] = [{**s, "points": 100.0 - s["points"]} for s in rule["steps"]]
        rule["else_points"] = 100.0 - rule.get("else_points", 0.0)
    elif kind in ("linear", "ratio"):
        rule["zero_at"], rule["full_at"] = rule["full_at"], rule["zero_at"]
    elif kind == "category":
        rule["points"] = {k: 100.0 - v for k, v in rule["points"].items()}
    elif kind == "boolean":
        rule["true_points"], rule["false_points"] = 100.0 - rule["true_points"], 100.0 - rule["false_points"]
    elif kind == "identity":  # 0-100 already: 100 - x is the line from 100 (0 points) to 0 (100 points)
        rule = {"type": "linear", "column": rule["column"], "zero_at": 100.0, "full_at": 0.0}
    elif kind == "trend":
        rule["points"] = {k: 100.0 - v for k, v in rule["points"].items()}
    else:  # pragma: no cover - the schema lists every rule type
        raise ValueError(f"cannot turn around a rule of type {kind!r}")
    return rule
