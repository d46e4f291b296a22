"""Opportunity probability adjusted by account health (seed 000_caaf87bd3b38802c.txt).

`band_multipliers` ("Mapping Health Score Bands to Forecast Probabilities"):
adjusted = base x range multiplier x trend multiplier, where the range is the
account's score in `band_multipliers` (0-30 x0.6, 31-70 x1.0, 71-100 x1.4;
a score belongs to the range whose `min` it reaches, like the health bands)
and the trend multiplier is `improving_multiplier` (x1.2) when the account's
30-day delta is >= +`trend_points` (10), `declining_multiplier` (x0.8) when
<= -`trend_points`, else 1. The table's two signal rows replace the range
multiplier: an `expansion` opportunity on an account in the top range gets
`expansion_multiplier` (x1.5, "Expansion Signal"); a `renewal` opportunity
on an account in the bottom range gets `churn_risk_multiplier` (x0.5,
"Churn Risk").

`delta` ("Formulas"): adjusted = base x (1 + delta / 100 x sensitivity),
delta = the score change over `delta_window_days` (30 -> delta_30d, 90 ->
delta_90d). Unknown delta -> no change.

`renormalise` (default on for both): the seed's multipliers are absolute
(x1.4 for Healthy), so on a book where most accounts are Healthy they raise
the expected ARR of every period, whether or not the CRM's probabilities were
already right. Until a history has been calibrated, health should only move
probability between deals: every factor is multiplied by one scale, found so
the open, adjustable pipeline's expected ARR equals its unadjusted total
(after the swing limit and [0, 1]; fixed-point iteration, at most
RENORMALISE_ROUNDS rounds), rounded to a power of RENORMALISE_STEP (the book
then stays within 1% of its total). With hysteresis: given the scale of the
previous run (`previous_scale`, kept in the state store by the sync), that
scale is kept as long as the book stays within RENORMALISE_BAND (2%) of its
total with it, and recomputed only when it would leave that band. So a day on
which 1% of the accounts change rewrites about 1% of the deals, never every
open deal for a scale moving by one step. `renormalise: false` keeps the
seed's absolute multipliers.

`fitted` (written by `healthsync calibrate`, `engine.forecast_fit`):
P(win) = sigmoid(base_coef x logit(base) + health shift(score) + trend_coef x
clip(delta_30d, -30, 30) / 10); the factor P / base is never renormalised.

All methods: clipped to +-`max_swing` relative to base (seed: "Limit to 20-30%
swings"), then to [0, 1]. Applied once per opportunity: the adjustment
always starts from the CRM `probability` (never from a previous
`adjusted_probability`), duplicate opportunity ids keep the last row, and
closed opportunities keep their probability. Accounts with no score or
with insufficient data leave their opportunities unadjusted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from healthsync.config.model import FittedForecast, ForecastConfig
from healthsync.engine.keys import KeyIndex, equals_any, has_duplicates, map_chunks, take_strings
from healthsync.engine.rules import category_codes, numeric_column

INSUFFICIENT_BAND_DEFAULT = "Insufficient data"
#: renormalisation stops when the book is within this relative distance of its unadjusted total, or after so many rounds
RENORMALISE_TOLERANCE = 1e-9
RENORMALISE_ROUNDS = 50
#: the scale is then rounded to a power of this step, so the book stays within half a step (1%) of its total
#: and a small change elsewhere in the book does not rewrite every open deal's probability in the CRM
RENORMALISE_STEP = 1.02
#: the previous run's scale is kept while the book stays within this relative distance of its total with it
RENORMALISE_BAND = 0.02
#: base probabilities are kept inside (LOGIT_EDGE, 1 - LOGIT_EDGE) before taking their log-odds
LOGIT_EDGE = 0.005
#: the fitted map reads the trend as clip(delta_30d, -TREND_CLIP, TREND_CLIP) / TREND_UNIT
TREND_CLIP, TREND_UNIT = 30.0, 10.0


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype="float64"), LOGIT_EDGE, 1.0 - LOGIT_EDGE)
    return np.log(q / (1.0 - q))


def trend_input(delta: np.ndarray) -> np.ndarray:
    """The fitted map's trend input (unknown delta -> 0, no news)."""
    return np.clip(np.nan_to_num(np.asarray(delta, dtype="float64")), -TREND_CLIP, TREND_CLIP) / TREND_UNIT


def fitted_win_probability(base: np.ndarray, score: np.ndarray, delta: np.ndarray, fitted: FittedForecast) -> np.ndarray:
    """P(win) of the fitted map (see the module docstring); NaN score -> no health shift."""
    shift = np.interp(np.asarray(score, dtype="float64"), fitted.health_x, fitted.health_y)
    shift = np.nan_to_num(shift)
    z = fitted.base_coef * logit(base) + shift + fitted.trend_coef * trend_input(delta)
    return 1.0 / (1.0 + np.exp(-z))


def _renormalised(base: np.ndarray, factor: np.ndarray, amount: np.ndarray, lo: float, hi: float,
                  previous: float | None = None) -> tuple[np.ndarray, float | None]:
    """Factors times one scale so that sum(amount x clip(base x factor, 0, 1)) = sum(amount x base); -> (factors, scale).

    The sum grows with the scale (every term is non-decreasing in it), so the
    fixed point scale <- scale x target / sum converges; the swing limit [lo, hi]
    still holds for every factor afterwards. `previous` (the last run's scale) is
    kept while the book stays within RENORMALISE_BAND of its total with it.
    """
    amount, base = np.nan_to_num(amount), np.nan_to_num(base)
    target = (amount * base).sum()
    if not len(factor) or target <= 0:
        return factor, None

    def book(scale: float) -> tuple[np.ndarray, float]:
        adjusted = np.clip(factor * scale, lo, hi)
        return adjusted, float((amount * np.clip(base * adjusted, 0.0, 1.0)).sum())

    if previous is not None and np.isfinite(previous) and previous > 0:
        adjusted, total = book(float(previous))
        if abs(total - target) <= RENORMALISE_BAND * target:
            return adjusted, float(previous)
    scale = 1.0
    for _ in range(RENORMALISE_ROUNDS):
        _, total = book(scale)
        if total <= 0 or abs(total - target) <= RENORMALISE_TOLERANCE * target:
            break
        scale *= target / total
    step = np.log(RENORMALISE_STEP)
    rounded = float(np.exp(np.round(np.log(scale) / step) * step))
    return np.clip(factor * rounded, lo, hi), rounded


def _range_index(scores: np.ndarray, config: ForecastConfig) -> np.ndarray:
    mins = np.array([b.min for b in config.band_multipliers], dtype="float64")
    with np.errstate(invalid="ignore"):
        return np.clip((scores[:, None] >= mins).sum(axis=1) - 1, 0, len(mins) - 1)


def adjust_opportunities(
    opportunities: pd.DataFrame,
    scored_with_trends: pd.DataFrame,
    config: ForecastConfig,
    insufficient_band: str = INSUFFICIENT_BAND_DEFAULT,
    previous_scale: float | None = None,
) -> pd.DataFrame:
    """Adds health_score, health_band, base_expected_arr, adjusted_probability, expected_arr."""
    return adjust_opportunities_scaled(opportunities, scored_with_trends, config, insufficient_band, previous_scale)[0]


def adjust_opportunities_scaled(
    opportunities: pd.DataFrame,
    scored_with_trends: pd.DataFrame,
    config: ForecastConfig,
    insufficient_band: str = INSUFFICIENT_BAND_DEFAULT,
    previous_scale: float | None = None,
) -> tuple[pd.DataFrame, float | None]:
    """`adjust_opportunities`, plus the renormalisation scale it applied (None when it did not renormalise).

    `previous_scale`: the scale of the previous run, kept while the book stays within
    RENORMALISE_BAND of its total with it (see the module docstring).
    """
    opps = opportunities
    if has_duplicates(opps["opportunity_id"]):
        opps = opps.drop_duplicates("opportunity_id", keep="last")
    opps = opps.reset_index(drop=True).copy(deep=False)  # new columns only; the input is untouched
    health = scored_with_trends
    if has_duplicates(health["account_id"]):
        health = health.drop_duplicates("account_id", keep="last")
    lookup = KeyIndex(health["account_id"])

    # account-level first (one row per account), then gathers per opportunity, chunk by chunk
    acc_score = numeric_column(health, "score")
    window = "delta_90d" if config.delta_window_days >= 90 else "delta_30d"
    acc_delta = numeric_column(health, window)
    band_names = sorted(set(pd.unique(health["band"].dropna()))) if len(health) else []
    band_code = category_codes(health, "band", band_names) if len(health) else np.zeros(0, dtype=np.int64)
    acc_usable = ~equals_any(health["band"], (insufficient_band,), case_insensitive=False) & ~np.isnan(acc_score)
    # a sentinel row at the end answers for opportunities whose account was not scored
    acc_score, acc_delta = np.append(acc_score, np.nan), np.append(acc_delta, np.nan)
    band_code, acc_usable = np.append(band_code, -1), np.append(acc_usable, False)
    unmatched = len(health)
    if config.method == "band_multipliers" and not config.band_multipliers:
        raise ValueError("forecast.band_multipliers: the band_multipliers method needs at least one range")

    n = len(opps)
    score_out = np.empty(n)
    code_out = np.empty(n, dtype=np.int64)
    factor_out = np.empty(n)
    usable_out = np.empty(n, dtype=bool)

    def adjust_chunk(start: int, stop: int) -> None:  # writes disjoint slices of the outputs
        chunk = opps.iloc[start:stop]
        pos = lookup.positions(chunk["account_id"])
        pos[pos < 0] = unmatched
        score, delta = acc_score[pos], acc_delta[pos]
        base = numeric_column(chunk, "probability")
        closed = (
            chunk["is_closed"].astype("boolean").fillna(False).to_numpy(dtype=bool)
            if "is_closed" in chunk.columns
            else np.zeros(len(chunk), dtype=bool)
        )
        usable = ~closed & acc_usable[pos] & bool(config.enabled)
        if config.method == "fitted":
            won = fitted_win_probability(base, score, delta, config.fitted)
            with np.errstate(divide="ignore", invalid="ignore"):
                factor = np.where(base > 0, won / base, 1.0)
        elif config.method == "delta":
            factor = 1.0 + np.nan_to_num(delta) / 100.0 * config.sensitivity
        else:
            idx = _range_index(np.nan_to_num(score), config)
            mult = np.array([b.multiplier for b in config.band_multipliers], dtype="float64")[idx]
            if "type" in chunk.columns:
                top, bottom = len(config.band_multipliers) - 1, 0
                mult = np.where(equals_any(chunk["type"], ("expansion",)) & (idx == top), config.expansion_multiplier, mult)
                mult = np.where(equals_any(chunk["type"], ("renewal",)) & (idx == bottom), config.churn_risk_multiplier, mult)
            with np.errstate(invalid="ignore"):
                trend = np.where(
                    delta >= config.trend_points,
                    config.improving_multiplier,
                    np.where(delta <= -config.trend_points, config.declining_multiplier, 1.0),
                )
            factor = mult * trend
        factor_out[start:stop] = np.clip(factor, 1.0 - config.max_swing, 1.0 + config.max_swing)
        usable_out[start:stop] = usable
        score_out[start:stop] = score
        code_out[start:stop] = band_code[pos]

    map_chunks(adjust_chunk, n)

    base = numeric_column(opps, "probability")
    amount = numeric_column(opps, "amount")
    factor = factor_out
    scale = None
    if config.renormalise and config.method != "fitted" and usable_out.any():
        factor = factor_out.copy()
        factor[usable_out], scale = _renormalised(base[usable_out], factor_out[usable_out], amount[usable_out],
                                                  1.0 - config.max_swing, 1.0 + config.max_swing, previous_scale)
    adjusted_out = np.round(np.where(usable_out, np.clip(base * factor, 0.0, 1.0), base), 6)
    opps["health_score"] = score_out
    opps["health_band"] = take_strings(band_names, code_out)
    opps["adjusted_probability"] = adjusted_out
    opps["base_expected_arr"] = np.round(amount * base, 2)
    opps["expected_arr"] = np.round(amount * adjusted_out, 2)
    return opps, scale


def close_quarter(close_date: pd.Series) -> pd.Series:
    """'2026Q4' style labels (NA where the date is missing)."""
    dates = pd.to_datetime(close_date, errors="coerce")
    labels = dates.dt.year.astype("Int64").astype("string") + "Q" + dates.dt.quarter.astype("Int64").astype("string")
    return labels


def rollup(adjusted: pd.DataFrame, by=("owner_email", "close_quarter", "forecast_category")) -> pd.DataFrame:
    """Before/after sums per group: opportunities, amount, base_expected_arr, expected_arr, change."""
    frame = adjusted
    by = list(by)
    if "close_quarter" in by and "close_quarter" not in frame.columns:
        frame = frame.assign(close_quarter=close_quarter(frame["close_date"]))
    missing = [c for c in by if c not in frame.columns]
    if missing:
        raise ValueError(f"rollup: unknown grouping columns {missing}")
    keys = frame[by].astype("string").fillna("(none)")
    grouped = pd.DataFrame(
        {
            "opportunities": 1,
            "amount": frame["amount"].astype("float64"),
            "base_expected_arr": frame["base_expected_arr"].astype("float64"),
            "expected_arr": frame["expected_arr"].astype("float64"),
        }
    )
    grouped[by] = keys
    out = grouped.groupby(by, sort=True, observed=True).sum(min_count=0).reset_index()
    out["change"] = (out["expected_arr"] - out["base_expected_arr"]).round(2)
    return out
