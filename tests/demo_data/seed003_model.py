"""A hand-written copy of the default model of seed 003_cec208348d92c0f6.txt, for judging the demo history.

The engine has its own implementation; this one exists so the generator's tests
do not depend on the engine (and would catch the two drifting apart only via
the engine's own tests). Scoring logic per metric, from the seed's measure table:
login daily=100 / weekly=70 / monthly=40 / none=0; feature adoption % used;
license utilisation active/seats; QBR 0 missed=100, 1=50, 2+=0; email <24h=100,
24-72h=60, >72h=20; exec active=100, partial=50, none=0; ticket trend 30d vs 90d
declining=100, stable=70, increasing=30; escalations 0=100, 1=60, 2+=20;
payments on time=100, <30d=50, >30d=10; CSM sentiment green=100, yellow=50, red=0.
Missing metrics drop out and their weight is redistributed.
"""

import numpy as np
import pandas as pd

WEIGHTS = {
    "login": 0.15, "features": 0.15, "license": 0.10, "qbr": 0.10, "email": 0.08,
    "exec": 0.07, "ticket_trend": 0.10, "escalations": 0.05, "payments": 0.10, "sentiment": 0.10,
}


def ticket_features(accounts: pd.DataFrame, tickets: pd.DataFrame) -> pd.DataFrame:
    """Trailing 30/90-day ticket counts and 90-day escalations per (account_id, as_of)."""
    rows = []
    for as_of, group in accounts.groupby("as_of"):
        seen = tickets[(tickets["created_at"] <= as_of) & (tickets["created_at"] > as_of - pd.Timedelta(days=90))]
        last30 = seen[seen["created_at"] > as_of - pd.Timedelta(days=30)]
        frame = pd.DataFrame({"account_id": group["account_id"], "as_of": as_of})
        frame["tickets_30d"] = frame["account_id"].map(last30.groupby("account_id").size()).fillna(0)
        frame["tickets_90d"] = frame["account_id"].map(seen.groupby("account_id").size()).fillna(0)
        frame["escalations_90d"] = frame["account_id"].map(seen[seen["escalated"]].groupby("account_id").size()).fillna(0)
        rows.append(frame)
    return accounts.merge(pd.concat(rows), on=["account_id", "as_of"], how="left")


def metric_scores(a: pd.DataFrame) -> pd.DataFrame:
    logins = a["logins_per_user_week"].astype(float)
    email = a["email_response_hours"].astype(float)
    late = a["days_payment_late"].astype(float)
    ratio = (a["tickets_30d"] / (a["tickets_90d"] / 3).replace(0, np.nan)).astype(float).to_numpy()
    esc = a["escalations_90d"].to_numpy()
    return pd.DataFrame(
        {
            "login": np.select([logins >= 5, logins >= 1, logins >= 0.25], [100, 70, 40], 0),
            "features": 100 * a["features_used"].astype(float) / a["features_available"].astype(float),
            "license": (100 * a["active_users_30d"].astype(float) / a["seats_purchased"].astype(float)).clip(0, 100),
            "qbr": a["qbrs_missed"].astype(float).map({0.0: 100.0, 1.0: 50.0}).fillna(0.0),
            "email": np.select([email < 24, email <= 72], [100, 60], 20),
            "exec": a["exec_sponsor"].map({"active": 100.0, "partial": 50.0, "none": 0.0}).astype(float),
            "ticket_trend": np.select([ratio < 0.8, ratio > 1.2], [100, 30], 70),
            "escalations": np.select([esc == 0, esc == 1], [100, 60], 20),
            "payments": np.select([late == 0, late < 30], [100, 50], 10),
            "sentiment": a["csm_sentiment"].map({"green": 100.0, "yellow": 50.0, "red": 0.0}).astype(float),
        },
        index=a.index,
    )


def default_score(scores: pd.DataFrame) -> pd.Series:
    weights = pd.DataFrame({k: np.where(scores[k].isna(), 0.0, w) for k, w in WEIGHTS.items()}, index=scores.index)
    return (scores.fillna(0.0) * weights).sum(axis=1) / weights.sum(axis=1)
