"""Lifecycle stage by tenure and the renewal window (seed 001_9b7515619717186a.txt,
"Health Score by Customer Lifecycle Stage": onboarding 0-90 days, adoption to
12 months, maturity after, renewal window the 60 days before renewal).

Stages are tried in config order; an account is in the first stage whose
`max_tenure_days` it has not passed (tenure <= max, so day 90 is still
onboarding); a stage without a maximum takes everyone left. Unknown tenure
(no `customer_since`) means no stage, so only base and segment thresholds
apply. The renewal window is 0 <= days_to_renewal <= window days; a renewal
date already passed is not "in the window" (the renewal is stale data).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from healthsync.config.model import ModelConfig
from healthsync.engine.keys import take_strings
from healthsync.engine.rules import numeric_column


def lifecycle_stage(features: pd.DataFrame, model: ModelConfig) -> pd.Series:
    """Stage name per row (NA where tenure is unknown or no stage matches)."""
    tenure = numeric_column(features, "tenure_days")
    known = ~np.isnan(tenure)
    conditions, names = [], []
    for stage in model.lifecycle.stages:
        if stage.max_tenure_days is None:
            conditions.append(known)
        else:
            conditions.append(known & (tenure <= stage.max_tenure_days))
        names.append(stage.name)
    if not conditions:
        return pd.Series(take_strings([], np.full(len(features), -1)), index=features.index)
    codes = np.select(conditions, np.arange(len(names)), default=-1)
    return pd.Series(take_strings(names, codes), index=features.index)


def in_renewal_window(features: pd.DataFrame, model: ModelConfig) -> np.ndarray:
    window = model.lifecycle.renewal_window
    if window is None:
        return np.zeros(len(features), dtype=bool)
    days = numeric_column(features, "days_to_renewal")
    with np.errstate(invalid="ignore"):
        return (days >= 0) & (days <= window.days)
