"""Score: the engine over the replica of every CRM at once, with score history for trends.

Both CRMs are scored in ONE frame: connector ids are already prefixed (`sf:`,
`hs:`), so they never collide, and a `crm` column says where each row came
from. The engine is pure (engine/ never imports sync/); this module feeds it
the replica and history, and shapes the result into the frame the playbooks
and the write-back read (notes/sync_contract.md):

    account_id, crm, name, segment, arr, renewal_date, owner_email, score, band,
    raw_band, confidence, delta_30d, delta_90d, momentum, drivers, trend,
    previous_score, previous_band  (+ the engine's other columns)

`previous_*` come from the latest score-history row of each account (NA when
it was never scored). Score history itself is written by `record_history` at
the end of the run (the "record" stage), so a run that crashes or stops before
the end leaves no history behind and its rerun sees the same previous scores;
a dry run records none either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from healthsync.config.settings import Settings
from healthsync.sync.pull import replica_frame
from healthsync.sync.state import StateStore, dumps, to_json_value, utc_naive

#: columns copied from the accounts replica next to the engine's scores
ACCOUNT_CONTEXT = ("name", "segment", "arr", "renewal_date", "owner_email", "crm")


@dataclass
class ScoreResult:
    """The scored portfolio: one row per account, and the open opportunities with their adjustment."""

    scores: pd.DataFrame
    opportunities: pd.DataFrame
    features: pd.DataFrame | None = None
    problems: list[str] = field(default_factory=list)
    #: the replica frames scored (accounts, opportunities, tickets), for the data-quality KPIs
    inputs: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: the forecast's renormalisation scale (None: not renormalised); a run that writes keeps it for the next one
    forecast_scale: float | None = None

    @property
    def bands(self) -> dict[str, int]:
        if self.scores.empty:
            return {}
        counts = self.scores["band"].astype("string").fillna("(none)").value_counts()
        return {str(k): int(v) for k, v in counts.sort_index().items()}


def trend_text(momentum: pd.Series, delta_30d: pd.Series) -> pd.Series:
    """The CRM trend field: momentum and 30-day delta, e.g. "down -12.0 (30d)"; "new (no 30d history)" when unknown.

    Fits Salesforce's Text(40) field. Stable from run to run while nothing changes,
    because the engine ignores history from the same day (engine/trends.py).
    """
    delta = pd.to_numeric(delta_30d, errors="coerce")
    mom = momentum.astype("string")
    known = delta.notna() & mom.notna()
    sign = np.where(delta.fillna(0).to_numpy() >= 0, "+", "-")
    text = mom.fillna("") + " " + pd.Series(sign, index=delta.index) + delta.abs().round(1).map("{:.1f}".format) + " (30d)"
    return text.where(known, "new (no 30d history)").astype(object)


def score_replica(store: StateStore, settings: Settings, crms: list[str], now: datetime, usage=None) -> ScoreResult:
    """Run the engine over the replica of `crms`; nothing is written to the store.

    `usage` (sync.warehouse_job.WarehouseUsage) adds the warehouse's usage columns, matched to
    the accounts here (the replica is loaded once).
    """
    from healthsync.engine.pipeline import score_portfolio
    from healthsync.sync.warehouse_job import match_accounts

    accounts = replica_frame(store, crms, "accounts")
    opportunities = replica_frame(store, crms, "opportunities")
    tickets = replica_frame(store, crms, "tickets")
    history = store.score_history_frame()
    as_of = pd.Timestamp(utc_naive(now))
    inputs = {"accounts": accounts, "opportunities": opportunities, "tickets": tickets}
    if accounts.empty:
        return ScoreResult(_empty_scores(), opportunities.iloc[0:0], inputs=inputs)
    account_usage = match_accounts(accounts, usage, settings) if usage is not None else None

    result = score_portfolio(
        accounts.drop(columns=["crm"]),
        tickets.drop(columns=["crm"]),
        opportunities.drop(columns=["crm"]),
        settings.model,
        settings.forecast,
        history=history[["account_id", "scored_at", "score", "band"]] if len(history) else None,
        as_of=as_of,
        account_usage=account_usage,
        # hysteresis: the last write-back's scale stays while the book is within 2% with it (engine/forecast.py)
        forecast_scale=store.forecast_scale(),
    )
    scores = result.scores.copy()
    context = accounts.drop_duplicates("account_id", keep="last").set_index("account_id")
    for column in ACCOUNT_CONTEXT:
        if column not in scores.columns or column == "crm":
            scores[column] = scores["account_id"].map(context[column]) if column in context.columns else pd.NA
    scores["trend"] = trend_text(scores.get("momentum", pd.Series(pd.NA, index=scores.index)), scores.get("delta_30d", pd.Series(np.nan, index=scores.index)))

    previous = _previous(history)
    scores["previous_score"] = scores["account_id"].map(previous["score"]).astype("float64")
    scores["previous_band"] = scores["account_id"].map(previous["band"]).astype("string")

    opps = result.opportunities.copy() if result.opportunities is not None else opportunities.iloc[0:0]
    if len(opps):
        if "crm" not in opps.columns:
            crm_of = opportunities.drop_duplicates("opportunity_id", keep="last").set_index("opportunity_id")["crm"]
            opps["crm"] = opps["opportunity_id"].map(crm_of)
        closed = opps["is_closed"].astype("boolean").fillna(False).astype(bool) if "is_closed" in opps.columns else False
        opps = opps.loc[~closed].reset_index(drop=True)
    return ScoreResult(scores.reset_index(drop=True), opps, getattr(result, "features", None), inputs=inputs,
                       forecast_scale=getattr(result, "forecast_scale", None))


def _previous(history: pd.DataFrame) -> pd.DataFrame:
    if history.empty:
        return pd.DataFrame({"score": pd.Series([], dtype="float64"), "band": pd.Series([], dtype="string")})
    last = history.sort_values(["scored_at", "run_id"]).drop_duplicates("account_id", keep="last")
    return last.set_index("account_id")[["score", "band"]]


def _empty_scores() -> pd.DataFrame:
    columns = ["account_id", "crm", "name", "segment", "arr", "renewal_date", "owner_email", "score", "band", "raw_band",
               "confidence", "delta_30d", "delta_90d", "momentum", "drivers", "trend", "previous_score", "previous_band"]
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})


def dimension_columns(scores: pd.DataFrame, settings: Settings) -> list[str]:
    dims = []
    for m in settings.model.metrics:
        name = f"{m.dimension}_score"
        if name in scores.columns and name not in dims:
            dims.append(name)
    return dims


#: Engine columns kept with each history row so the report can say when and why a CSM moved the band.
OVERRIDE_COLUMNS = ("override", "override_reason", "raw_band")


def _plain_override(value):
    return bool(value) if isinstance(value, (bool, np.bool_)) else value


def history_rows(scores: pd.DataFrame, settings: Settings, run_id: str, now: datetime) -> list[dict]:
    """One score-history row per scored account for this run.

    Built column by column (`json_column`), not row by row through `dumps`' generic walk: every run
    writes one row per account, 200,000 on a 100,000-account-per-CRM day (~7 s row by row, ~1 s so).
    """
    if scores.empty:
        return []
    dims = dimension_columns(scores, settings)
    scored_at = utc_naive(now)
    overrides = [c for c in OVERRIDE_COLUMNS if c in scores.columns]
    # the dimension scores, plus the CSM override as the engine recorded it (shown in the report)
    details = {d.removesuffix("_score"): json_column(scores[d]) for d in dims}
    details.update({c: [_plain_override(v) for v in json_column(scores[c])] for c in overrides})
    names = sorted(details)  # dumps' sorted keys
    encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False).encode
    dimension_json = [encode(dict(zip(names, values))) for values in zip(*(details[n] for n in names))] if names \
        else ["{}"] * len(scores)
    return [
        {"run_id": run_id, "account_id": account_id, "scored_at": scored_at, "score": score, "band": band,
         "confidence": confidence, "dimension_json": details_json, "drivers": drivers, "trend": trend}
        for account_id, score, band, confidence, details_json, drivers, trend in zip(
            json_column(scores["account_id"]), json_column(scores["score"].astype("float64")), json_column(scores["band"]),
            json_column(scores["confidence"].astype("float64")), dimension_json, json_column(scores["drivers"]),
            json_column(scores["trend"]))
    ]


def json_column(series: pd.Series) -> list:
    """A column as JSON-safe Python values, missing ones None: what `dumps` makes of each value, for all at once."""
    if series.dtype.kind == "f":
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        out = values.tolist()
        for i in np.flatnonzero(~np.isfinite(values)).tolist():
            out[i] = None
        return out
    return [v if type(v) is str else to_json_value(v) for v in series.tolist()]  # text as it is: most columns are


def record_history(store: StateStore, settings: Settings, scores: pd.DataFrame, run_id: str, now: datetime,
                   features: pd.DataFrame | None = None) -> int:
    """Score history of this run, and (with the engine's `features`) today's usage snapshot per account."""
    rows = history_rows(scores, settings, run_id, now)
    store.add_score_history(rows)
    if features is not None and len(features) and len(scores):
        store.record_usage(usage_rows(features, scores["account_id"]), pd.Timestamp(utc_naive(now)).date(), run_id)
    return len(rows)


#: usage_history column -> the canonical accounts column it snapshots (the customer-facing report charts them)
USAGE_COLUMNS = {
    "active_users": "active_users_30d",
    "seats_purchased": "seats_purchased",
    "logins_per_user_week": "logins_per_user_week",
    "features_used": "features_used",
    "features_available": "features_available",
}


def usage_rows(features: pd.DataFrame, scored_ids: pd.Series) -> list[dict]:
    """One usage row per scored account (missing figures stay None: never a zero); built column by column."""
    frame = features.drop_duplicates("account_id", keep="last")
    scored = set(scored_ids.astype(str).tolist())
    ids = [str(a) for a in frame["account_id"].tolist()]
    keep = np.fromiter((a in scored for a in ids), dtype=bool, count=len(ids))
    frame = frame[keep]
    columns = {"account_id": [a for a, k in zip(ids, keep) if k]}
    for column, source in USAGE_COLUMNS.items():
        values = pd.to_numeric(frame[source], errors="coerce") if source in frame.columns else pd.Series(float("nan"), index=frame.index)
        columns[column] = json_column(values.astype("float64"))
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*columns.values())]
