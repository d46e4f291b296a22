"""Learn the forecast adjustment (`forecast.method: fitted`) from the customer's own won and lost deals.

Why: the seed's band multipliers (seed 000_caaf87bd3b38802c.txt, x1.4 for
Healthy) are one vendor's numbers. Applied as they stand to a book whose CRM
probabilities are already optimistic, they make the forecast worse. What
health is worth for a forecast is an empirical question each book answers.

Method: logistic recalibration (Cox 1958) of the CRM probability, plus what
health adds beyond it:

    logit P(win) = base_coef x logit(base) + shift(score) + trend_coef x trend

`shift` is piecewise linear in the account's health score through knots at
quantiles of the training scores (KNOT_QUANTILES), so a step, a slope or a
curve in how health matters can all be followed; `trend` is the 30-day score
change (engine.forecast.trend_input). The parameters are a maximum a
posteriori fit with a Gaussian prior centred on "no change" (base_coef 1, no
shift, no trend): where the history has few deals the prior wins and the map
stays near the identity, and a few thousand deals overrule it (the prior
counts like a handful of observations). scipy's L-BFGS minimises the
penalised log-loss with its exact gradient.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from healthsync.config.model import FittedForecast
from healthsync.engine.forecast import logit, trend_input

KNOT_QUANTILES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
#: prior standard deviations (log-odds) of the departures from "no change"
PRIOR_SD_BASE = 0.5
PRIOR_SD_HEALTH = 0.5
PRIOR_SD_TREND = 0.25
#: the trend enters the fit only when this share of training deals has a known 30-day delta
MIN_TREND_SHARE = 0.2
#: fewer usable training deals (or no win, or no loss) than this: nothing is fitted
MIN_OPPORTUNITIES = 50
DECIMALS = 4


class ForecastFitError(ValueError):
    """The training deals cannot support a fit; the message says why."""


def health_knots(score: np.ndarray) -> list[float]:
    """Knots at quantiles of the training scores, rounded to one decimal and strictly increasing."""
    knots = np.unique(np.round(np.quantile(score, KNOT_QUANTILES), 1))
    if len(knots) < 2:
        knots = np.array([knots[0] - 1.0, knots[0] + 1.0])
    return [float(k) for k in knots]


def hat_basis(score: np.ndarray, knots: list[float]) -> np.ndarray:
    """(n, len(knots)) weights of linear interpolation: np.interp(score, knots, y) == basis @ y."""
    eye = np.eye(len(knots))
    return np.column_stack([np.interp(score, knots, eye[j]) for j in range(len(knots))])


def fit_forecast(base, score, delta, won) -> FittedForecast:
    """The fitted map from open training deals: CRM probability, account score and delta, and the outcome."""
    base = np.asarray(base, dtype="float64")
    score = np.asarray(score, dtype="float64")
    delta = np.asarray(delta, dtype="float64")
    won = np.asarray(won, dtype="float64")
    ok = np.isfinite(base) & np.isfinite(score) & np.isfinite(won) & (base > 0)
    n, wins = int(ok.sum()), int(won[ok].sum())
    if n < MIN_OPPORTUNITIES or wins == 0 or wins == n:
        raise ForecastFitError(f"{n} usable training opportunities with {wins} won; a fit needs at least "
                               f"{MIN_OPPORTUNITIES} with both won and lost deals")
    base, score, delta, won = base[ok], score[ok], delta[ok], won[ok]
    offset = logit(base)
    knots = health_knots(score)
    use_trend = np.isfinite(delta).mean() >= MIN_TREND_SHARE
    columns = [offset[:, None], hat_basis(score, knots)]
    sds = [PRIOR_SD_BASE] + [PRIOR_SD_HEALTH] * len(knots)
    if use_trend:
        columns.append(trend_input(delta)[:, None])
        sds.append(PRIOR_SD_TREND)
    x = np.hstack(columns)
    precision = 1.0 / np.square(np.asarray(sds))

    def loss(theta: np.ndarray):
        eta = offset + x @ theta
        # log(1 + e^eta) - won x eta, computed without overflow
        value = np.logaddexp(0.0, eta).sum() - won @ eta + 0.5 * (precision * theta * theta).sum()
        p = 0.5 * (1.0 + np.tanh(0.5 * eta))
        grad = x.T @ (p - won) + precision * theta
        return value, grad

    result = minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    theta = result.x
    return FittedForecast(
        base_coef=round(1.0 + float(theta[0]), DECIMALS),
        health_x=knots,
        health_y=[round(float(v), DECIMALS) for v in theta[1:1 + len(knots)]],
        trend_coef=round(float(theta[-1]), DECIMALS) if use_trend else 0.0,
        opportunities=n,
    )
