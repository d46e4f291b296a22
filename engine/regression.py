"""The `regression` fitted model: churn probability from the metrics' raw values (`calibrate --method fitted`).

Why next to the rule-based score: a metric rule turns a value into a few
steps of points (logins >= 5 -> 100, >= 1 -> 70 ...), which throws away most
of what the value says about churn. A regularised logistic regression on the
values themselves ranks accounts as well as a plain regression would, and
the model it writes stays readable: one line per metric, with the value it
reads, its transform, the clip range, centre, scale and coefficient
(`config.model.RegressionTerm`). `engine.scoring` applies it as
health = 100 - 100 x P(churn).

Transforms, learned on the training rows only:
- `log1p` for a raw value that is never negative and right-skewed (counts,
  hours, days late: skewness above SKEW_FOR_LOG);
- clipping to the CLIP_QUANTILES of the training values, so an outlier
  cannot dominate the linear term;
- centring and scaling (mean and standard deviation after clipping); an
  absent value counts as the centre, i.e. as no news either way.
Category and trend rules have no numeric raw value: their 0-100 metric score
is used instead (`value: score`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from healthsync.config.model import (
    BooleanRule,
    FittedModel,
    IdentityRule,
    LinearRule,
    Metric,
    ModelConfig,
    RatioRule,
    RegressionTerm,
    StepsRule,
)
from healthsync.engine.rules import _boolean, numeric_column, ratio_values, score_rule

SKEW_FOR_LOG = 1.0
CLIP_QUANTILES = (0.01, 0.99)
#: inverse regularisation strength of scikit-learn's L2 penalty on the standardised inputs
REGULARISATION_C = 1.0
DECIMALS = 6


def metric_value(features: pd.DataFrame, metric: Metric, value: str = "raw") -> np.ndarray:
    """The number a regression term reads for `metric` (NaN = absent), see the module docstring."""
    rule = metric.rule
    if value == "score":
        return score_rule(features, rule)
    if isinstance(rule, (StepsRule, LinearRule, IdentityRule)):
        return numeric_column(features, rule.column)
    if isinstance(rule, RatioRule):
        return ratio_values(features, rule)
    if isinstance(rule, BooleanRule):
        return _boolean(features, rule.column)
    return score_rule(features, rule)


def value_kind(metric: Metric) -> str:
    return "raw" if isinstance(metric.rule, (StepsRule, LinearRule, IdentityRule, RatioRule, BooleanRule)) else "score"


def _transform(values: np.ndarray, transform: str) -> np.ndarray:
    if transform == "log1p":
        return np.log1p(np.clip(values, 0.0, None))
    return values


def term_inputs(features: pd.DataFrame, model: ModelConfig, terms: list[RegressionTerm]) -> np.ndarray:
    """(n, len(terms)) standardised inputs; absent values are 0 (the centre)."""
    by_name = {m.name: m for m in model.metrics}
    columns = []
    for term in terms:
        raw = _transform(metric_value(features, by_name[term.metric], term.value), term.transform)
        x = (np.clip(raw, term.clip[0], term.clip[1]) - term.center) / term.scale
        columns.append(np.where(np.isnan(x), 0.0, x))
    return np.column_stack(columns) if columns else np.zeros((len(features), 0))


def regression_probability(features: pd.DataFrame, model: ModelConfig, fitted: FittedModel) -> np.ndarray:
    x = term_inputs(features, model, fitted.terms)
    z = x @ np.array([t.coef for t in fitted.terms], dtype="float64") + fitted.intercept
    return 1.0 / (1.0 + np.exp(-z))


def _skewness(v: np.ndarray) -> float:
    sd = v.std()
    return float(np.mean((v - v.mean()) ** 3) / sd**3) if sd > 0 else 0.0


def _unfitted_terms(features: pd.DataFrame, model: ModelConfig) -> list[RegressionTerm]:
    """Transform, clip range, centre and scale of every metric with a usable value on the training rows."""
    terms = []
    for metric in model.metrics:
        kind = value_kind(metric)
        raw = metric_value(features, metric, kind)
        known = raw[~np.isnan(raw)]
        if len(known) < 2:
            continue
        transform = "log1p" if kind == "raw" and known.min() >= 0 and _skewness(known) > SKEW_FOR_LOG else "none"
        t = _transform(known, transform)
        low, high = (float(v) for v in np.quantile(t, CLIP_QUANTILES))
        clipped = np.clip(t, low, high)
        scale = float(clipped.std())
        if not scale > 0:
            continue
        terms.append(RegressionTerm(metric=metric.name, value=kind, transform=transform,
                                    clip=[round(low, DECIMALS), round(high, DECIMALS)],
                                    center=round(float(clipped.mean()), DECIMALS), scale=round(scale, DECIMALS),
                                    coef=0.0))
    return terms


def fit_regression(features: pd.DataFrame, churned: np.ndarray, model: ModelConfig) -> FittedModel:
    """L2-regularised logistic regression of churn on the transformed metric values (unweighted, so the
    probabilities stay calibrated)."""
    terms = _unfitted_terms(features, model)
    if not terms:
        raise ValueError("calibrate --method fitted: no metric has a usable value in the training period")
    x = term_inputs(features, model, terms)
    lr = LogisticRegression(C=REGULARISATION_C, max_iter=2000).fit(x, np.asarray(churned, dtype="int64"))
    fitted_terms = [t.model_copy(update={"coef": round(float(c), DECIMALS)}) for t, c in zip(terms, lr.coef_[0])]
    return FittedModel(kind="regression", intercept=round(float(lr.intercept_[0]), DECIMALS), terms=fitted_terms)
