"""Backtest: score every past snapshot with only what was known then, and compare with what happened.

Seeds: 001_9b7515619717186a.txt (validation, accuracy, false positives and
negatives, retention by score range, A/B of model variations),
000_caaf87bd3b38802c.txt (time-based validation, AUC-ROC / PR-AUC / Brier,
forecast MAPE before and after adjustment, uplift = (pre - post) / pre).

Input is the history of design.md ("history for validation"): snapshots of
the accounts (`as_of`, `churned` = did not renew within the horizon after
`as_of`), all tickets, and optionally opportunity snapshots with their outcome
(`won`, `won_amount`). For each `as_of` the features are built from that
snapshot's account row and the tickets created on or before `as_of`, so no
snapshot sees the future; `churned` and the deal outcomes are only ever
compared with, never fed to, the model.

Churn probability for the Brier score and the reliability table, in order:
1. the model's own calibrated map (`model.fitted`, written by `calibrate`),
   applied exactly as `method: fitted` scores (health = 100 - 100 x p);
2. otherwise Platt scaling fitted forward in time: each snapshot's scores are
   mapped with a Platt fit on the earlier snapshots only (the first snapshot
   has no past and is left out of the Brier score); with a single snapshot
   the fit is in-sample, and the report says so.

The result is a plain JSON-safe dict (contract keys: `auc`, `pr_auc`,
`brier`, `accuracy`, `precision`, `recall`, `f1`, `forecast.mape_before`,
`forecast.mape_after`, `drift`, and `challenger` + `winner` with a
challenger model). `format_text` renders it for the console.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from healthsync.config.model import ForecastConfig, ModelConfig
from healthsync.engine import metrics as m
from healthsync.engine.drift import drift_report
from healthsync.engine.drivers import explain
from healthsync.engine.features import build_features
from healthsync.engine.forecast import adjust_opportunities
from healthsync.engine.scoring import HealthScorer
from healthsync.engine.trends import compute_trends

#: outcome columns of the history files: never passed to features or scoring
OUTCOME_COLUMNS = ("churned", "churned_at", "won", "won_amount")
DEFAULT_TOP_N = 10
#: backtest / calibrate warn when more than this share of account-snapshots is in the at-risk bands
MAX_AT_RISK_SHARE = 0.35
#: ... when the at-risk bands' precision is below this multiple of the base rate (they barely beat chance)
MIN_PRECISION_LIFT = 1.5
#: ... and when more than this share of accounts falls to the insufficient-data band
MAX_INSUFFICIENT_SHARE = 0.05


class HistoryError(ValueError):
    """The history cannot be read as the design.md contract; the message names the file, column or record."""


def outcome_labels(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """0/1 outcome labels from 0/1, true/false, yes/no, y/n in any case; returns (labels, bad mask).

    The same spellings as the canonical boolean columns (config.canonical). Missing
    and unreadable values are `bad` (label -1).
    """
    from healthsync.config.canonical import _to_bool

    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        num = values.to_numpy(dtype="float64", na_value=np.nan)
        bad = ~np.isin(num, (0.0, 1.0))
        return np.where(bad, -1, num).astype("int64"), bad
    parsed, _ = _to_bool(values)
    bad = parsed.isna().to_numpy()
    return np.where(bad, -1, parsed.fillna(False).to_numpy(dtype=bool).astype("int64")), bad


# ----------------------------------------------------------------------------- input


@dataclass
class HistoryFrames:
    """The three history frames, checked: accounts_history, tickets, opportunities_history (or None)."""

    accounts_history: pd.DataFrame
    tickets: pd.DataFrame | None
    opportunities_history: pd.DataFrame | None

    @property
    def as_of_dates(self) -> list[pd.Timestamp]:
        return sorted(pd.Timestamp(d) for d in self.accounts_history["as_of"].unique())


def history_frames(history) -> HistoryFrames:
    """Accept a `History` (attributes) or a dict with the design.md frame names; check the contract columns."""
    def get(name):
        if isinstance(history, dict):
            return history.get(name)
        return getattr(history, name, None)

    accounts = get("accounts_history")
    if accounts is None:
        raise HistoryError("history: accounts_history is required (README, 'Canonical data')")
    missing = [c for c in ("account_id", "as_of", "churned") if c not in accounts.columns]
    if missing:
        raise HistoryError(f"history: accounts_history is missing the column(s) {missing}")
    if not len(accounts):
        raise HistoryError("history: accounts_history has no usable rows (see the record problems above)")
    accounts = accounts.copy()
    accounts["as_of"] = pd.to_datetime(accounts["as_of"], errors="coerce").dt.normalize()
    if accounts["as_of"].isna().any():
        bad = accounts.loc[accounts["as_of"].isna(), "account_id"].iloc[0]
        raise HistoryError(f"history: accounts_history has a row without a valid as_of date (account {bad})")
    churned, bad_rows = outcome_labels(accounts["churned"])
    if bad_rows.any():
        ids = accounts.loc[bad_rows, "account_id"].astype(str).head(3).tolist()
        raise HistoryError(f"history: accounts_history.churned must be 0/1, true/false, yes/no or y/n "
                           f"({int(bad_rows.sum())} rows are not, e.g. accounts {', '.join(ids)})")
    accounts["churned"] = churned
    if "churned_at" in accounts.columns:
        accounts["churned_at"] = pd.to_datetime(accounts["churned_at"], errors="coerce").dt.normalize()
    opps = get("opportunities_history")
    if opps is not None and len(opps):
        missing = [c for c in ("account_id", "as_of", "amount", "probability", "won_amount") if c not in opps.columns]
        if missing:
            raise HistoryError(f"history: opportunities_history is missing the column(s) {missing}")
        opps = opps.copy()
        opps["as_of"] = pd.to_datetime(opps["as_of"], errors="coerce").dt.normalize()
        if "won" in opps.columns:
            won, bad_won = outcome_labels(opps["won"])
            opps["won"] = np.where(bad_won, np.nan, won)  # unknown outcome: left out of the forecast fit
    else:
        opps = None
    return HistoryFrames(accounts, get("tickets"), opps)  # no tickets: ticket metrics absent, not zero


# ----------------------------------------------------------------------------- scoring the past


@dataclass
class Snapshot:
    """One `as_of`: the features (no outcomes) and the outcome kept aside, row-aligned."""

    as_of: pd.Timestamp
    features: pd.DataFrame
    churned: np.ndarray
    churned_at: np.ndarray | None = None


def build_snapshots(frames: HistoryFrames, model: ModelConfig) -> list[Snapshot]:
    """Features per `as_of`, each from that snapshot's rows and tickets created on or before it."""
    out = []
    for as_of in frames.as_of_dates:
        rows = frames.accounts_history[frames.accounts_history["as_of"] == as_of]
        rows = rows.drop_duplicates("account_id", keep="last").reset_index(drop=True)
        accounts = rows.drop(columns=[c for c in OUTCOME_COLUMNS if c in rows.columns])
        tickets = frames.tickets
        opps = None
        if frames.opportunities_history is not None:
            opps = frames.opportunities_history[frames.opportunities_history["as_of"] == as_of]
            opps = opps.drop(columns=[c for c in OUTCOME_COLUMNS if c in opps.columns])
        features = build_features(accounts, tickets, opportunities=opps, as_of=as_of, model=model)
        churned_at = rows["churned_at"].to_numpy() if "churned_at" in rows.columns else None
        out.append(Snapshot(as_of, features, rows["churned"].to_numpy(dtype="int64"), churned_at))
    return out


def at_risk_bands(model: ModelConfig) -> list[str]:
    return [b.name for b in model.bands if b.at_risk]


def score_snapshots(snapshots: list[Snapshot], model: ModelConfig) -> pd.DataFrame:
    """The scorer's output for every snapshot, stacked, plus `as_of`, `churned`, `flagged`."""
    scorer = HealthScorer(model)
    parts = []
    risky = at_risk_bands(model)
    for snap in snapshots:
        scored = scorer.score(snap.features)
        scored["as_of"] = snap.as_of
        scored["churned"] = snap.churned
        scored["flagged"] = scored["band"].isin(risky).to_numpy()
        parts.append(scored)
    return pd.concat(parts, ignore_index=True)


def churn_probability(scored: pd.DataFrame, snapshots: list[Snapshot], model: ModelConfig) -> tuple[np.ndarray, str]:
    """Calibrated churn probability per scored row and how it was obtained (see the module docstring)."""
    if model.method == "fitted":
        return 1.0 - scored["score"].to_numpy(dtype="float64") / 100.0, "model.fitted (method fitted)"
    if model.fitted is not None:
        fitted_model = model.model_copy(update={"method": "fitted"})
        fitted = score_snapshots(snapshots, fitted_model)
        return 1.0 - fitted["score"].to_numpy(dtype="float64") / 100.0, f"model.fitted ({model.fitted.kind})"
    score = scored["score"].to_numpy(dtype="float64")
    y = scored["churned"].to_numpy(dtype="int64")
    as_of = scored["as_of"].to_numpy()
    dates = np.unique(as_of)
    prob = np.full(len(scored), np.nan)
    if len(dates) == 1:
        try:
            prob = m.PlattCalibrator().fit(score, y).predict(score)
        except ValueError:
            pass
        return prob, "Platt, in-sample (one snapshot only)"
    for d in dates[1:]:
        past = as_of < d
        try:
            cal = m.PlattCalibrator().fit(score[past], y[past])
        except ValueError:
            continue
        now = as_of == d
        prob[now] = cal.predict(score[now])
    return prob, "Platt fitted on earlier snapshots (first snapshot excluded)"


# ----------------------------------------------------------------------------- report pieces


def lead_time(scored: pd.DataFrame, dates: list[pd.Timestamp], churned_at: pd.Series | None = None) -> dict:
    """Days from the first at-risk snapshot (of the run ending at the account's last snapshot) to churn.

    The churn date is the account's `churned_at` when the history has that
    column. Otherwise it is the first snapshot the account is missing from (an
    upper bound: it left between its last snapshot and that one), so the
    figure is only as fine as the snapshot interval, which the result states
    (`resolution_days`); churned accounts still present in the last snapshot
    then have no churn date yet.
    """
    frame = scored[["account_id", "as_of", "churned", "flagged"]].sort_values(["account_id", "as_of"])
    last = frame.groupby("account_id", sort=False).tail(1)
    gaps = (np.diff(pd.DatetimeIndex(dates)) / pd.Timedelta(days=1)) if len(dates) > 1 else np.array([])
    resolution = float(np.median(gaps)) if len(gaps) else None
    empty = {"churned_accounts": 0, "flagged_before_churn": 0, "share_flagged": None,
             "median_days": None, "mean_days": None}
    if churned_at is not None:
        when = pd.Series(pd.to_datetime(churned_at.to_numpy()), index=scored["account_id"].to_numpy())
        when = when.dropna()
        when = when[~when.index.duplicated(keep="last")]
        churners = last[(last["churned"] == 1) & last["account_id"].isin(when.index)]
        churn_date = when.reindex(churners["account_id"].to_numpy())
        source = "churned_at column"
    else:
        churners = last[(last["churned"] == 1) & (last["as_of"] < dates[-1])]
        date_index = pd.DatetimeIndex(dates)
        if churners.empty:
            return {**empty, "churn_date": "first snapshot the account is missing from (upper bound)",
                    "resolution_days": resolution}
        next_pos = date_index.searchsorted(pd.DatetimeIndex(churners["as_of"]), side="right")
        churn_date = pd.Series(date_index[next_pos], index=churners["account_id"].to_numpy())
        source = "first snapshot the account is missing from (upper bound)"
    if churners.empty:
        return {**empty, "churn_date": source, "resolution_days": None}
    rows = frame[frame["account_id"].isin(churn_date.index)].iloc[::-1]
    # rows of each account's trailing run of consecutive at-risk snapshots (newest first)
    broken = (~rows["flagged"]).groupby(rows["account_id"], sort=False).cumsum()
    run = rows[broken == 0]
    first_flag = run.groupby("account_id")["as_of"].min()
    days = (churn_date.reindex(first_flag.index) - first_flag).dt.days.to_numpy(dtype="float64")
    days = days[~np.isnan(days)]
    n = len(churn_date)
    return {
        "churned_accounts": int(n),
        "flagged_before_churn": int(len(days)),
        "share_flagged": len(days) / n,
        "median_days": float(np.median(days)) if len(days) else None,
        "mean_days": float(np.mean(days)) if len(days) else None,
        "churn_date": source,
        "resolution_days": None if churned_at is not None else resolution,
    }


def _cases(scored: pd.DataFrame, snapshots: list[Snapshot], model: ModelConfig, mask: np.ndarray,
           ascending: bool, top_n: int) -> list[dict]:
    """The `top_n` most confidently wrong accounts (one row each, latest wrong snapshot), with drivers."""
    wrong = scored[mask].sort_values(["score", "as_of"], ascending=[ascending, False], kind="stable")
    wrong = wrong.drop_duplicates("account_id").head(top_n)
    if wrong.empty:
        return []
    by_date = {s.as_of: s.features for s in snapshots}
    texts = pd.Series("", index=wrong.index, dtype="object")
    for as_of, group in wrong.groupby("as_of"):
        drivers = explain(group.reset_index(drop=True), by_date[as_of], model)
        texts.loc[group.index] = np.asarray(drivers.astype(object).to_numpy(), dtype=object)
    return [
        {"account_id": a, "as_of": d.date().isoformat(), "score": float(s), "band": b, "drivers": t}
        for a, d, s, b, t in zip(wrong["account_id"], wrong["as_of"], wrong["score"], wrong["band"], texts)
    ]


def _period_rows(scored: pd.DataFrame) -> list[dict]:
    rows = []
    for as_of, g in scored.groupby("as_of"):
        c = m.confusion(g["churned"], g["flagged"])
        rows.append({
            "as_of": as_of.date().isoformat(),
            "accounts": int(len(g)),
            "churned": int(g["churned"].sum()),
            "auc": m.auc(g["churned"], -g["score"]),
            "recall": c["recall"],
            "precision": c["precision"],
        })
    return rows


def snapshot_trends(scored: pd.DataFrame, stable_within: float = 5.0, prior: pd.DataFrame | None = None):
    """(as_of, scores of that snapshot with delta_30d / delta_90d / momentum) for each snapshot in order.

    Each snapshot's trends come from the earlier snapshots' scores only (and
    `prior`: scores of snapshots outside `scored`, e.g. the training period,
    with account_id, score, band, scored_at).
    """
    history = prior
    for as_of, current in scored.groupby("as_of", sort=True):
        current = current.reset_index(drop=True)
        earlier = None if history is None else history[history["scored_at"] < as_of]
        trends = compute_trends(current, earlier, as_of=as_of, stable_within=stable_within)
        yield as_of, pd.concat([current, trends.drop(columns=["account_id"])], axis=1)
        snap = current[["account_id", "score", "band"]].assign(scored_at=as_of)
        history = snap if history is None else pd.concat([history, snap], ignore_index=True)


def forecast_backtest(frames: HistoryFrames, scored: pd.DataFrame, forecast: ForecastConfig,
                      stable_within: float = 5.0, prior: pd.DataFrame | None = None) -> dict | None:
    """Per period: won ARR vs expected ARR before and after the health adjustment (seed 000).

    Expected before = sum(amount x stage probability); after = the adjusted
    expected ARR of `engine.forecast`, with each snapshot's trends computed from
    the earlier snapshots' scores only. MAPE over periods with won ARR; uplift
    = (MAPE before - MAPE after) / MAPE before; `book_change` = expected ARR
    after / before - 1 over all periods (how much the adjustment moved the book).
    """
    if frames.opportunities_history is None:
        return None
    periods = []
    for as_of, with_trends in snapshot_trends(scored, stable_within, prior):
        opps = frames.opportunities_history[frames.opportunities_history["as_of"] == as_of]
        if len(opps):
            outcome = pd.to_numeric(opps["won_amount"], errors="coerce").fillna(0.0).to_numpy()
            inputs = opps.drop(columns=[c for c in OUTCOME_COLUMNS if c in opps.columns]).reset_index(drop=True)
            adjusted = adjust_opportunities(inputs, with_trends, forecast)
            before = (pd.to_numeric(inputs["amount"], errors="coerce").fillna(0.0)
                      * pd.to_numeric(inputs["probability"], errors="coerce").fillna(0.0)).sum()
            periods.append({
                "as_of": as_of.date().isoformat(),
                "opportunities": int(len(opps)),
                "actual_won_arr": float(outcome.sum()),
                "expected_before": float(before),
                "expected_after": float(pd.to_numeric(adjusted["expected_arr"], errors="coerce").fillna(0.0).sum()),
            })
    if not periods:
        return None
    actual = [p["actual_won_arr"] for p in periods]
    before = [p["expected_before"] for p in periods]
    after = [p["expected_after"] for p in periods]
    for p in periods:
        a = p["actual_won_arr"]
        p["ape_before"] = abs(a - p["expected_before"]) / a * 100 if a else None
        p["ape_after"] = abs(a - p["expected_after"]) / a * 100 if a else None
    mape_before, mape_after = m.mape(actual, before), m.mape(actual, after)
    return {
        "periods": periods,
        "mape_before": mape_before,
        "mape_after": mape_after,
        "mae_before": m.mae(actual, before),
        "mae_after": m.mae(actual, after),
        "uplift": (mape_before - mape_after) / mape_before if mape_before else None,
        "book_change": sum(after) / sum(before) - 1.0 if sum(before) else None,
        "method": forecast.method if forecast.enabled else "disabled",
    }


def _drift(scored: pd.DataFrame, snapshots: list[Snapshot], model: ModelConfig) -> dict | None:
    """Latest snapshot vs all earlier ones (the period a calibration would have trained on)."""
    if len(snapshots) < 2:
        return None
    latest = snapshots[-1].as_of
    feats = pd.concat([s.features.assign(_as_of=s.as_of) for s in snapshots], ignore_index=True)
    raw_cols = [c for c in feats.columns if c not in scored.columns]
    both = pd.concat([scored, feats[raw_cols]], axis=1)
    return drift_report(both[both["as_of"] < latest], both[both["as_of"] == latest], model)


# ----------------------------------------------------------------------------- public


def health_warnings(report: dict, insufficient_band: str) -> list[str]:
    """What a RevOps admin must not miss in a validation report (module constants)."""
    warnings = []
    share, precision, base = report.get("at_risk_share"), report.get("precision"), report.get("base_rate")
    bands = "/".join(report.get("at_risk_bands") or [])
    if share is not None and share > MAX_AT_RISK_SHARE:
        warnings.append(f"{share:.0%} of account-snapshots are in the at-risk bands ({bands}), more than "
                        f"{MAX_AT_RISK_SHARE:.0%}: the bands flag too much of the book to act on")
    if precision is not None and base and precision < MIN_PRECISION_LIFT * base:
        warnings.append(f"at-risk precision {precision:.1%} is below {MIN_PRECISION_LIFT:g}x the churn base rate "
                        f"({base:.1%}): being flagged barely raises the odds of churn")
    insufficient = report.get("insufficient_share")
    if insufficient is not None and insufficient > MAX_INSUFFICIENT_SHARE:
        warnings.append(f"{insufficient:.1%} of account-snapshots fall to {insufficient_band!r} "
                        f"(more than {MAX_INSUFFICIENT_SHARE:.0%}): too little weight on the metrics they have")
    return warnings


def evaluate(frames: HistoryFrames, snapshots: list[Snapshot], model: ModelConfig,
             forecast: ForecastConfig | None, top_n: int = DEFAULT_TOP_N,
             prob_map: m.PlattCalibrator | None = None, prior_scores: pd.DataFrame | None = None) -> dict:
    """The validation report of one model on already-built snapshots (used by backtest and calibrate).

    `prob_map`: a score -> churn probability map fitted elsewhere (calibrate
    fits the configured model's on the training part, so the configured and
    calibrated models are compared on the same footing). `prior_scores`:
    scores of earlier snapshots outside these (trends for the forecast).
    """
    scored = score_snapshots(snapshots, model)
    y = scored["churned"].to_numpy(dtype="int64")
    score = scored["score"].to_numpy(dtype="float64")
    if prob_map is not None:
        prob, prob_method = prob_map.predict(score), "Platt map fitted on the training part"
    else:
        prob, prob_method = churn_probability(scored, snapshots, model)
    flagged = scored["flagged"].to_numpy(dtype=bool)
    ops = m.confusion(y, flagged)
    has_prob = ~np.isnan(prob)
    dates = [s.as_of for s in snapshots]
    churned_at = None
    if snapshots and all(s.churned_at is not None for s in snapshots):
        churned_at = pd.Series(np.concatenate([s.churned_at for s in snapshots]))
    report = {
        "periods": [d.date().isoformat() for d in dates],
        "rows": int(len(scored)),
        "churned": int(y.sum()),
        "base_rate": float(y.mean()) if len(y) else None,
        "at_risk_share": float(flagged.mean()) if len(y) else None,
        "insufficient_share": float((scored["band"] == model.insufficient_band).mean()) if len(y) else None,
        "auc": m.auc(y, -score),
        "pr_auc": m.pr_auc(y, -score),
        "brier": m.brier(y[has_prob], prob[has_prob]),
        "brier_rows": int(has_prob.sum()),
        "probability_method": prob_method,
        "reliability": m.reliability_table(y[has_prob], prob[has_prob]),
        "at_risk_bands": at_risk_bands(model),
        **ops,
        "band_counts": {str(k): int(v) for k, v in scored["band"].value_counts().items()},
        "retention_by_score": m.retention_by_score(score, y),
        "lead_time": lead_time(scored, dates, churned_at),
        "false_negatives": _cases(scored, snapshots, model, (y == 1) & ~flagged, ascending=False, top_n=top_n),
        "false_positives": _cases(scored, snapshots, model, (y == 0) & flagged, ascending=True, top_n=top_n),
        "by_period": _period_rows(scored),
        "forecast": (forecast_backtest(frames, scored, forecast, model.trend_stable_within, prior_scores)
                     if forecast is not None else None),
        "drift": _drift(scored, snapshots, model),
    }
    report["warnings"] = health_warnings(report, model.insufficient_band)
    return m.json_safe(report)


#: metric -> True when higher is better (the challenger comparison)
COMPARED = {
    "auc": True, "pr_auc": True, "brier": False, "accuracy": True, "precision": True, "recall": True, "f1": True,
    "forecast.mape_after": False, "forecast.mae_after": False,
}


def _lookup(report: dict, dotted: str):
    value = report
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def compare(champion: dict, challenger: dict) -> dict:
    """Per metric: 'champion', 'challenger', 'tie' (equal to 1e-9) or None when either lacks it."""
    out = {}
    for key, higher in COMPARED.items():
        a, b = _lookup(champion, key), _lookup(challenger, key)
        if a is None or b is None:
            out[key] = None
        elif abs(a - b) <= 1e-9:
            out[key] = "tie"
        else:
            out[key] = "champion" if (a > b) == higher else "challenger"
    return out


def backtest(history, model: ModelConfig, forecast: ForecastConfig | None = None,
             challenger_model: ModelConfig | None = None, top_n: int = DEFAULT_TOP_N,
             challenger_forecast: ForecastConfig | None = None) -> dict:
    """Validate `model` (and optionally a challenger) on the history; a JSON-safe dict (module docstring).

    The challenger uses `challenger_forecast` when given, else the champion's
    forecast config, so a model-only challenger is compared on the same forecast rules.
    """
    frames = history_frames(history)
    snapshots = build_snapshots(frames, model)
    report = evaluate(frames, snapshots, model, forecast, top_n)
    if challenger_model is not None:
        challenger_snapshots = build_snapshots(frames, challenger_model)
        report["challenger"] = evaluate(frames, challenger_snapshots, challenger_model,
                                        challenger_forecast or forecast, top_n)
        report["winner"] = compare(report, report["challenger"])
    return report


# ----------------------------------------------------------------------------- console


def _num(value, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _signed_pct(value) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _section(report: dict, title: str) -> list[str]:
    c = report.get("confusion", {})
    lines = [
        title,
        f"  periods {', '.join(report['periods'])}",
        f"  {report['rows']} account-snapshots, {report['churned']} churned, base rate {_pct(report['base_rate'])}",
        f"  discrimination  AUC-ROC {_num(report['auc'])}   PR-AUC {_num(report['pr_auc'])}",
        f"  calibration     Brier {_num(report['brier'])} on {report['brier_rows']} rows",
        f"                  ({report['probability_method']})",
        f"  flagged ({'/'.join(report['at_risk_bands']) or 'no at-risk band'}) vs churned:",
        f"    accuracy {_pct(report['accuracy'])}  precision {_pct(report['precision'])}  "
        f"recall {_pct(report['recall'])}  F1 {_num(report['f1'])}",
        f"    TP {c.get('true_positive', 0)}  FP {c.get('false_positive', 0)}  "
        f"FN {c.get('false_negative', 0)}  TN {c.get('true_negative', 0)}",
        f"    at-risk share {_pct(report.get('at_risk_share'))} of account-snapshots; "
        f"insufficient data {_pct(report.get('insufficient_share'))}",
    ]
    lt = report.get("lead_time") or {}
    if lt.get("churned_accounts"):
        lines.append(f"  lead time: {lt['flagged_before_churn']} of {lt['churned_accounts']} churned accounts "
                     "were at risk before leaving;")
        resolution = lt.get("resolution_days")
        within = f" (churn dated to within the {resolution:.0f}-day snapshot interval)" if resolution else ""
        lines.append(f"    median {_num(lt['median_days'], '.0f')} days from first at-risk snapshot to churn{within}")
    lines.append("  reliability (decile: predicted -> observed churn)")
    for r in report.get("reliability", []):
        lines.append(f"    {r['decile']:>2}  {r['mean_predicted']:.3f} -> {r['observed_rate']:.3f}  (n={r['n']})")
    lines.append("  retention by score range")
    for r in report.get("retention_by_score", []):
        lines.append(f"    {r['range']:>7}  {_pct(r['retention_rate']):>6}  n={r['n']}")
    fc = report.get("forecast")
    if fc:
        lines.append("  forecast: won ARR vs expected (before -> after health adjustment)")
        for p in fc["periods"]:
            lines.append(
                f"    {p['as_of']}  actual {p['actual_won_arr']:>13,.0f}  before {p['expected_before']:>13,.0f}  "
                f"after {p['expected_after']:>13,.0f}"
            )
        lines.append(f"    MAPE {_num(fc['mape_before'], '.1f')}% -> {_num(fc['mape_after'], '.1f')}%   "
                     f"uplift {_pct(fc['uplift'])}")
        lines.append(f"    MAE {_num(fc['mae_before'], ',.0f')} -> {_num(fc['mae_after'], ',.0f')}   "
                     f"book {_signed_pct(fc.get('book_change'))} ({fc.get('method')})")
    for key, label in (("false_negatives", "missed churn (high score, churned)"),
                       ("false_positives", "false alarms (at risk, renewed)")):
        cases = report.get(key) or []
        if cases:
            lines.append(f"  {label}:")
            for case in cases:
                lines.append(f"    {case['account_id']}  {case['as_of']}  {case['score']:5.1f} {case['band']}")
                lines.append(f"      {case['drivers']}")
    for w in report.get("warnings") or []:
        lines.append(f"  WARNING {w}")
    return lines


def _calibration_lines(report: dict) -> list[str]:
    cal = report["calibration"]
    lines = [
        f"Calibration ({cal['method']}, {cal['probability_map']} probability map)",
        f"  {cal.get('split_description', '')}",
        f"  trained on {', '.join(cal['train_periods'])} ({cal['train_churn_events']} churn events)",
        f"  validated on {', '.join(cal['validation_periods'])}",
        f"  at-risk bands ({'/'.join(cal['at_risk_bands'])}) below {_num(cal['at_risk_boundary'], '.0f')}: "
        f"training recall {_pct(cal['train_recall'])}, precision {_pct(cal.get('train_precision'))}, "
        f"at-risk share {_pct(cal.get('train_at_risk_share'))} (limit {_pct(cal.get('max_at_risk_share'))})",
        f"    worst training snapshot {_pct(cal.get('train_worst_period_recall'))} "
        f"(target {_pct(cal['target_recall'])} + margin {_pct(cal.get('recall_margin'))})",
        f"  weights ({cal['evidence_kind']}):",
    ]
    turned, zeroed = set(cal.get("turned_around") or []), set(cal.get("zeroed") or [])
    for name, after in cal["weights_after"].items():
        before = cal["weights_before"].get(name)
        evidence = cal["evidence"].get(name)
        note = "  turned around" if name in turned else ("  no clear direction: 0" if name in zeroed else "")
        lines.append(f"    {name:<22} {_num(before, '.4f')} -> {_num(after, '.4f')}   ({_num(evidence, '.4f')}){note}")
    base = report.get("baseline") or {}
    if base:
        lines.append("  held-out part, configured model -> calibrated (probability maps fitted on the training part):")
        for key in ("auc", "pr_auc", "brier", "precision", "recall", "f1", "at_risk_share"):
            lines.append(f"    {key:<13} {_num(base.get(key))} -> {_num(report.get(key))}")
    fc = report.get("forecast") or {}
    if fc.get("fitted"):
        state = "kept" if fc.get("enabled") else "switched off (forecast.enabled: false)"
        lines.append(f"  forecast map fitted on the training deals, held-out MAPE {_num(fc.get('mape_before'), '.1f')}% "
                     f"-> {_num(fc.get('mape_after'), '.1f')}%: {state}")
    return lines + [""]


def format_text(report: dict) -> str:
    """A readable console report (what `healthsync backtest` and `calibrate` print without --json)."""
    lines = _calibration_lines(report) if report.get("calibration") else []
    lines += _section(report, "Held-out validation" if report.get("calibration") else "Model backtest")
    if report.get("challenger"):
        lines += [""] + _section(report["challenger"], "Challenger")
        lines.append("")
        lines.append("Winner per metric")
        for key, who in report.get("winner", {}).items():
            a, b = _lookup(report, key), _lookup(report["challenger"], key)
            lines.append(f"  {key:<22} champion {_num(a)}  challenger {_num(b)}  -> {who or 'n/a'}")
    drift = report.get("drift")
    if drift:
        lines.append("")
        lines.append("Drift (latest snapshot vs earlier snapshots, PSI)")
        for name, d in drift["metrics"].items():
            lines.append(f"  {name:<22} {_num(d['psi'])}  {d['level']}")
        for w in drift["warnings"]:
            lines.append(f"  WARNING {w}")
    return "\n".join(lines)
