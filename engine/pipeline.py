"""One call from canonical frames to scores, trends, drivers and adjusted opportunities.

The sync job and the offline `healthsync score` command both call
`score_portfolio`; file and CRM I/O stay with the callers (design.md: the
engine does no I/O). Works on frames read from canonical CSV (string ids,
dates as datetime64) as well as on connector output.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from healthsync.config.model import ForecastConfig, ModelConfig
from healthsync.engine.drivers import explain
from healthsync.engine.features import OPPORTUNITY_FEATURES, as_of_timestamp, build_features
from healthsync.engine.rules import rule_columns
from healthsync.engine.forecast import adjust_opportunities_scaled
from healthsync.engine.scoring import HealthScorer
from healthsync.engine.trends import compute_trends


@dataclass
class PortfolioScores:
    features: pd.DataFrame
    scores: pd.DataFrame  # scoring columns + delta_30d, delta_90d, momentum, days_in_band, drivers, as_of
    opportunities: pd.DataFrame | None  # adjusted; None when no opportunities were given
    #: the forecast's renormalisation scale (engine/forecast.py), None when it did not renormalise
    forecast_scale: float | None = None


def score_portfolio(
    accounts: pd.DataFrame,
    tickets: pd.DataFrame | None,
    opportunities: pd.DataFrame | None,
    model: ModelConfig,
    forecast: ForecastConfig | None = None,
    history: pd.DataFrame | None = None,
    as_of=None,
    usage: pd.DataFrame | None = None,
    top_drivers: int = 3,
    account_usage: pd.DataFrame | None = None,
    forecast_scale: float | None = None,
) -> PortfolioScores:
    """features -> HealthScorer -> trends (from `history`: account_id, scored_at, score, band)
    -> drivers -> forecast adjustment of the opportunities. `account_usage`: the warehouse's
    per-account usage columns (engine/usage.py). `forecast_scale`: the previous run's
    renormalisation scale, kept while the book stays within 2% of its total (engine/forecast.py)."""
    day = as_of_timestamp(as_of)
    # opportunity features cost a join of every opportunity; only build them when a metric reads them
    needed = {c for m in model.metrics for c in rule_columns(m.rule)}
    opps_for_features = opportunities if needed & set(OPPORTUNITY_FEATURES) else None
    features = build_features(accounts, tickets, opps_for_features, usage=usage, as_of=day, model=model,
                              account_usage=account_usage)
    tickets = opps_for_features = None  # not read past the features: a caller that handed them over frees them now
    scores = HealthScorer(model).score(features)
    trends = compute_trends(scores, history, as_of=day, stable_within=model.trend_stable_within)
    for col in ("delta_30d", "delta_90d", "momentum", "days_in_band"):
        scores[col] = trends[col].array
    scores["drivers"] = explain(scores, features, model).array
    scores["as_of"] = day
    adjusted, scale = None, None
    if opportunities is not None:
        adjusted, scale = adjust_opportunities_scaled(
            opportunities, scores, forecast or ForecastConfig(), insufficient_band=model.insufficient_band,
            previous_scale=forecast_scale,
        )
    return PortfolioScores(features=features, scores=scores, opportunities=adjusted, forecast_scale=scale)
