"""Product usage from the warehouse, as accounts-frame columns any metric rule can read.

The warehouse source (connectors/warehouse.py) aggregates usage inside the warehouse and
hands back one row per product account; sync matches those rows to CRM accounts. This
module turns the matched rows into metric inputs:

    active_users_30d        distinct users, last 30 days
    logins_per_user_week    logins in the last 30 days / active users / (30 / 7)
    features_used           distinct features used, last 30 days (feature_adoption divides it by
                            features_available: adoption breadth)
    session_rate_30d/_90d   logins per day over the last 30 / 90 days (the trend rule's short/long)
    session_trend           session_rate_30d / session_rate_90d
    decay_engagement        sum of value x exp(-0.05 x age_days) (seed 000, "Churn Prediction
                            Using Health Scores")
    decay_engagement_index  0-100: decay_engagement per purchased seat (seed 002: usage "relative
                            to seat count") over the portfolio's highest, x 100 (seed 000's
                            "(weighted_engagement / max_engagement) * 100")
    mta_engagement (+ mta_first, mta_last, mta_linear, mta_time_decay, mta_position_based)
                            decayed multi-touch-attribution credits (seed 000, "Translating MTA
                            Credits into Health Score Signals")
    mta_engagement_index    0-100, the same max normalisation
    days_since_last_event   idle days (seed 000 behavioural signals: "Idle Periods")

Absent is not zero (design.md): an account with no usage row (nothing in the warehouse
window, or no key match) gets NaN in every one of these columns, so its usage metrics are
absent and their weight is redistributed. The warehouse is authoritative for the columns it
provides: a CRM field of the same name (Active_Users_30d__c) is replaced, not mixed in.

Where no warehouse feeds the frame at all, the metrics reading only warehouse-only columns
(session trend, engagement indexes) are left out of the model, their weight returned to the
other metrics of their dimension: a CRM-only setup scores exactly as the seed-003 measure
table says, at full confidence (`unavailable_usage_metrics`, used by the scorer).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from healthsync.config.model import ModelConfig
from healthsync.engine.rules import numeric_column, rule_columns

SHORT_DAYS, LONG_DAYS = 30, 90

#: Columns the warehouse also shares with CRM fields (replaced when the warehouse feeds the run).
SHARED_COLUMNS = ("active_users_30d", "logins_per_user_week", "features_used", "features_available")
#: Columns only the warehouse provides.
WAREHOUSE_ONLY_COLUMNS = (
    "sessions_30d", "sessions_90d", "session_rate_30d", "session_rate_90d", "session_trend",
    "decay_engagement", "decay_engagement_index", "events_window", "days_since_last_event",
    "touchpoints_window", "mta_first", "mta_last", "mta_linear", "mta_time_decay", "mta_position_based",
    "mta_engagement", "mta_engagement_index",
)
USAGE_COLUMNS = SHARED_COLUMNS + WAREHOUSE_ONLY_COLUMNS


def derive_usage(raw: pd.DataFrame, as_of: pd.Timestamp | None = None) -> pd.DataFrame:
    """The warehouse's aggregates (one row per key) plus the derived rates; NaN stays NaN.

    A key with rows in the window but none in the last 30 days has 0 sessions and 0
    logins per user (a real zero: it was using the product and stopped), not NaN.
    """
    out = raw.copy()
    has_usage = numeric_column(out, "events_window") > 0
    for column in ("sessions_30d", "sessions_90d"):
        if column in out.columns:
            values = numeric_column(out, column)
            out[column] = np.where(has_usage & np.isnan(values), 0.0, values)
    if "sessions_30d" in out.columns:
        sessions_30d = numeric_column(out, "sessions_30d")
        out["session_rate_30d"] = sessions_30d / SHORT_DAYS
        if "active_users_30d" in out.columns:
            users = numeric_column(out, "active_users_30d")
            with np.errstate(divide="ignore", invalid="ignore"):
                per_user = np.where(users > 0, sessions_30d / np.where(users > 0, users, 1.0) / (SHORT_DAYS / 7), np.nan)
            out["logins_per_user_week"] = np.where(has_usage & (sessions_30d == 0), 0.0, per_user)
    if "sessions_90d" in out.columns:
        out["session_rate_90d"] = numeric_column(out, "sessions_90d") / LONG_DAYS
        if "session_rate_30d" in out.columns:
            long_rate = out["session_rate_90d"].to_numpy(dtype="float64")
            with np.errstate(divide="ignore", invalid="ignore"):
                out["session_trend"] = np.where(long_rate > 0, out["session_rate_30d"].to_numpy(dtype="float64") / long_rate, np.nan)
    if as_of is not None and "last_event_at" in out.columns:
        last = pd.to_datetime(out["last_event_at"], errors="coerce", utc=True).dt.tz_localize(None)
        out["days_since_last_event"] = (pd.Timestamp(as_of).tz_localize(None) - last).dt.total_seconds().to_numpy() / 86400.0
    return out


def _max_index(values: np.ndarray) -> np.ndarray:
    """100 x value / the highest value present (seed 000: weighted_engagement / max_engagement x 100)."""
    finite = values[np.isfinite(values)]
    top = finite.max() if len(finite) else np.nan
    if not np.isfinite(top) or top <= 0:
        return np.where(np.isfinite(values), 0.0, np.nan)
    return np.clip(100.0 * values / top, 0.0, 100.0)


def account_usage_columns(accounts: pd.DataFrame, usage: pd.DataFrame) -> dict[str, np.ndarray]:
    """Usage columns aligned to `accounts` rows (by account_id; NaN where an account has no usage row)."""
    if "account_id" not in usage.columns:
        raise ValueError("account usage: the account_id column is required")
    usage = usage.drop_duplicates("account_id", keep="last").set_index("account_id")
    aligned = usage.reindex(accounts["account_id"].to_numpy())
    out: dict[str, np.ndarray] = {}
    for column in usage.columns:
        if column in ("account_key", "last_event_at"):
            continue
        out[column] = pd.to_numeric(aligned[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    if "decay_engagement" in out:
        seats = numeric_column(accounts, "seats_purchased")
        per_seat = np.where(seats > 0, out["decay_engagement"] / np.where(seats > 0, seats, 1.0), np.nan)
        # without a seat count the raw sum stands in, so an account is never dropped for missing master data
        per_seat = np.where(np.isnan(seats) | (seats <= 0), out["decay_engagement"], per_seat)
        out["decay_engagement_index"] = _max_index(per_seat)
    if "mta_engagement" in out:
        out["mta_engagement_index"] = _max_index(out["mta_engagement"])
    return out


def unavailable_usage_metrics(model: ModelConfig, columns: Iterable[str]) -> set[str]:
    """Metrics that read only warehouse-only columns, none of which the frame has: no warehouse feeds it.

    A metric named by the traffic-light rules or the fitted map stays in (those refer to it by name).
    """
    present = set(columns)
    only = set(WAREHOUSE_ONLY_COLUMNS)
    pinned = set(model.traffic_light) | set(model.traffic_light_red) | set(model.fitted.metrics if model.fitted else [])
    out = set()
    for metric in model.metrics:
        inputs = set(rule_columns(metric.rule))
        if inputs and inputs <= only and not inputs & present and metric.name not in pinned:
            out.add(metric.name)
    return out


def redistribute_within_dimension(weights: np.ndarray, model: ModelConfig, dropped: set[str]) -> np.ndarray:
    """(accounts x metrics) weights with the `dropped` metrics' weight given to their dimension's other metrics.

    Proportionally, so each dimension keeps its share (seed 002: 40% product / 35% financial /
    25% support pillars); a dimension left with no metric passes its weight to all the rest.
    """
    names = [m.name for m in model.metrics]
    drop = np.array([n in dropped for n in names])
    if not drop.any():
        return weights
    out = weights.copy()
    dims = np.array([m.dimension for m in model.metrics], dtype=object)
    for dim in {model.metrics[i].dimension for i in np.flatnonzero(drop)}:
        in_dim = dims == dim
        freed = out[:, in_dim & drop].sum(axis=1)
        keep = in_dim & ~drop
        kept = out[:, keep].sum(axis=1)
        if keep.any():
            scale = np.where(kept > 0, (kept + freed) / np.where(kept > 0, kept, 1.0), 1.0)
            out[:, keep] *= scale[:, None]
        else:
            rest = ~drop & ~in_dim
            total = out[:, rest].sum(axis=1)
            scale = np.where(total > 0, (total + freed) / np.where(total > 0, total, 1.0), 1.0)
            out[:, rest] *= scale[:, None]
        out[:, in_dim & drop] = 0.0
    return out
