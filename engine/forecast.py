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

Both: clipped to +-`max_swing` relative to base (seed: "Limit to 20-30%
swings"), then to [0, 1]. Applied once per opportunity: the adjustment
always starts from the CRM `probability` (never from a previous
`adjusted_probability`), duplicate opportunity ids keep the last row, and
closed opportunities keep their probability. Accounts with no score or
with insufficient data leave their opportunities unadjusted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from config.model import ForecastConfig
from engine.rules import numeric_column

INSUFFICIENT_BAND_DEFAULT = "Insufficient data"


def _range_index(scores: np.ndarray, config: ForecastConfig) -> np.ndarray:
    mins = np.array([b.min for b in config.band_multipliers], dtype="float64")
    with np.errstate(invalid="ignore"):
        return np.clip((scores[:, None] >= mins).sum(axis=1) - 1, 0, len(mins) - 1)


def adjust_opportunities(
    opportunities: pd.DataFrame,
    scored_with_trends: pd.DataFrame,
    config: ForecastConfig,
    insufficient_band: str = INSUFFICIENT_BAND_DEFAULT,
) -> pd.DataFrame:
    """Adds health_score, health_band, base_expected_arr, adjusted_probability, expected_arr."""
    opps = opportunities.drop_duplicates("opportunity_id", keep="last").reset_index(drop=True).copy()
    health = scored_with_trends.drop_duplicates("account_id", keep="last")
    pos = pd.Index(health["account_id"].astype("string").to_numpy(dtype=object, na_value=None)).get_indexer(
        opps["account_id"].astype("string").to_numpy(dtype=object, na_value=None)
    )
    matched = pos >= 0
    take = np.where(matched, pos, 0)

    def pick(column: str, numeric: bool = True) -> np.ndarray:
        if column not in health.columns:
            return np.full(len(opps), np.nan if numeric else None, dtype="float64" if numeric else object)
        values = (
            health[column].to_numpy(dtype="float64", na_value=np.nan)
            if numeric
            else health[column].astype("object").to_numpy()
        )
        picked = values[take] if len(values) else np.full(len(opps), np.nan if numeric else None)
        return np.where(matched, picked, np.nan if numeric else None)

    score = pick("score")
    band = pick("band", numeric=False)
    window = "delta_90d" if config.delta_window_days >= 90 else "delta_30d"
    delta = pick(window)

    base = numeric_column(opps, "probability")
    amount = numeric_column(opps, "amount")
    closed = (
        opps["is_closed"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        if "is_closed" in opps.columns
        else np.zeros(len(opps), dtype=bool)
    )
    usable = ~closed & ~np.isnan(score) & (band != insufficient_band) & config.enabled

    if config.method == "delta":
        factor = 1.0 + np.nan_to_num(delta) / 100.0 * config.sensitivity
    else:
        if not config.band_multipliers:
            raise ValueError("forecast.band_multipliers: the band_multipliers method needs at least one range")
        idx = _range_index(np.nan_to_num(score), config)
        mult = np.array([b.multiplier for b in config.band_multipliers], dtype="float64")[idx]
        kind = opps["type"].astype("string").str.lower().fillna("").to_numpy(dtype=object) if "type" in opps.columns else np.full(len(opps), "", dtype=object)
        top, bottom = len(config.band_multipliers) - 1, 0
        mult = np.where((kind == "expansion") & (idx == top), config.expansion_multiplier, mult)
        mult = np.where((kind == "renewal") & (idx == bottom), config.churn_risk_multiplier, mult)
        with np.errstate(invalid="ignore"):
            trend = np.where(
                delta >= config.trend_points,
                config.improving_multiplier,
                np.where(delta <= -config.trend_points, config.declining_multiplier, 1.0),
            )
        factor = mult * trend

    factor = np.clip(factor, 1.0 - config.max_swing, 1.0 + config.max_swing)
    adjusted = np.where(usable, np.clip(base * factor, 0.0, 1.0), base)

    opps["health_score"] = score
    opps["health_band"] = band
    opps["adjusted_probability"] = np.round(adjusted, 6)
    opps["base_expected_arr"] = np.round(amount * base, 2)
    opps["expected_arr"] = np.round(amount * opps["adjusted_probability"].to_numpy(), 2)
    return opps


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
