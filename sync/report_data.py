"""The portfolio report's numbers: the state store read into DataFrames.

Why a module of its own: the report template only formats, and the charts only
draw, so every number a reader sees (band counts, ARR at risk, the top-10 list,
SLA states, forecast roll-ups) is computed here, once, from the state store
tables of notes/sync_contract.md, and can be tested without rendering HTML.

Sources (all read-only):
    score_history   the latest run's row per account is "now"; earlier runs are the trend
    replica         canonical accounts (name, ARR, owner, renewal) and opportunities
    pushed          the adjusted probability the CRM confirmed per opportunity
    runs            the latest run's summary (mode, errors, drift warnings)
    episodes, escalations   open playbook tasks with their SLA clock, Slack escalations
    cursors, replica        data freshness per CRM object
    drift, backtests        model drift and accuracy, when the validation jobs wrote them

`now` is passed in (the sandbox clock in sandbox mode), so SLA states are reproducible.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from healthsync.config.settings import Settings
from healthsync.sync.state import StateStore

#: "Due soon" = the last quarter of the task's SLA window, and never less than the last 4 hours. A Red
#: account's task (24 h SLA, seed 003) turns "due soon" 6 h before its due time, a Yellow one (a week) 42 h
#: before. A task with no known open time uses the 24 h window.
DUE_SOON_SHARE = 0.25
DUE_SOON_MIN_HOURS = 4
DUE_SOON_HOURS = 24
#: A CRM object whose last pull is older than this is flagged stale (the default schedule runs daily).
STALE_AFTER_HOURS = 36
#: Renewals this close are "upcoming" (seed 001: the renewal window is the last 60-90 days).
RENEWAL_HORIZON_DAYS = 90
#: Drill-down pages are rendered for at most this many accounts (file size and render time).
DRILL_DOWN_CAP = 200
TOP_AT_RISK = 10
OPEN_OPPORTUNITY_OBJECT = "opportunities"
ACCOUNT_OBJECT = "accounts"
NO_OWNER = "(no owner)"


@dataclass
class BandInfo:
    """One band as the report shows it (configured bands, then any extra label such as 'Insufficient data')."""

    name: str
    color: str
    at_risk: bool
    rank: int  # 0 = worst
    configured: bool = True  # False for labels found only in the data (e.g. "Insufficient data")


@dataclass
class ReportData:
    """Everything the report renders; frames are empty (never None) when the store has nothing yet."""

    now: datetime
    owner: str | None
    run: dict[str, Any]
    bands: list[BandInfo]
    accounts: pd.DataFrame  # one row per scored account of the latest run, portfolio-wide or the owner's
    history: pd.DataFrame  # account_id, run_id, scored_at, score, band
    trend: pd.DataFrame  # per run: run_id, scored_at, accounts, mean_score, <band> counts
    band_summary: pd.DataFrame  # band, color, at_risk, accounts, share, arr, arr_share
    opportunities: pd.DataFrame  # open opportunities with base and adjusted probability
    forecast: pd.DataFrame  # quarter, opportunities, amount, base_expected, adjusted_expected
    tasks: pd.DataFrame  # open playbook tasks with sla_status
    escalations: pd.DataFrame
    freshness: pd.DataFrame
    drift: pd.DataFrame
    drift_warnings: list[str]
    backtest: dict[str, Any] | None
    top_at_risk: pd.DataFrame
    renewals_at_risk: pd.DataFrame
    drill_down: pd.DataFrame  # the accounts given a drill-down page, in order
    drill_down_total: int  # how many accounts qualified before the cap
    adjusted_source: str  # where adjusted probabilities came from ("crm write-back", "engine", "none")
    notes: list[str] = field(default_factory=list)
    data_quality: dict[str, Any] = field(default_factory=dict)  # the last run's KPIs per source (sync/data_quality.py)

    @property
    def arr_at_risk(self) -> float:
        return float(self.band_summary.loc[self.band_summary["at_risk"], "arr"].sum()) if len(self.band_summary) else 0.0

    @property
    def improving(self) -> int:
        return int((self.accounts["momentum"] == "up").sum()) if len(self.accounts) else 0

    @property
    def declining(self) -> int:
        return int((self.accounts["momentum"] == "down").sum()) if len(self.accounts) else 0


# ----------------------------------------------------------------------------- helpers


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _naive_ts(value: datetime) -> pd.Timestamp:
    """Stored datetimes are naive UTC; compare against `now` in the same terms."""
    return pd.Timestamp(_aware(value).replace(tzinfo=None))


def _read(store: StateStore, table: str, *where) -> pd.DataFrame:
    t = store.tables[table]
    query = select(t)
    for clause in where:
        query = query.where(clause(t))
    with store.engine.connect() as conn:
        result = conn.execute(query)
        columns = list(result.keys())
        # plain tuples: pandas probing SQLAlchemy Row objects costs seconds at 100k rows
        return pd.DataFrame.from_records([tuple(r) for r in result], columns=columns)


def _json_objects(texts: pd.Series) -> list[Any]:
    """Parse a column of JSON texts in one call (None stays None)."""
    if not len(texts):
        return []
    return json.loads("[" + ",".join(t if isinstance(t, str) and t else "null" for t in texts) + "]")


def _drivers_text(value: Any) -> str:
    """Drivers are stored as text; a JSON list (one driver per item) is joined for reading."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    if text.startswith("["):
        try:
            items = json.loads(text)
            return "; ".join(str(i) for i in items if i)
        except ValueError:
            return text
    return text


def band_infos(settings: Settings, seen: list[str]) -> list[BandInfo]:
    """Configured bands worst -> best, then labels found in the data but not configured (grey, not at risk)."""
    out = [BandInfo(b.name, b.color, bool(b.at_risk), i) for i, b in enumerate(settings.model.bands)]
    known = {b.name for b in out}
    extra = [settings.model.insufficient_band] + sorted(s for s in seen if s)
    for name in extra:
        if name not in known and name in seen:
            out.append(BandInfo(name, "#9aa0a6", False, len(out), configured=False))
            known.add(name)
    return out


def parse_trend(trend: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(momentum, delta_30d) from the stored trend text ("down -12.0 (30d)", see sync.score_job.trend_text)."""
    text = trend.astype("string")
    parts = text.str.extract(r"^\s*(up|down|stable)\s+([+-]?\d+(?:\.\d+)?)\s*\(30d\)", expand=True)
    momentum = parts[0].astype("string")
    delta = pd.to_numeric(parts[1], errors="coerce").astype("float64")
    return momentum, delta


def _momentum(delta_prev: pd.Series, trend: pd.Series, stable_within: float) -> tuple[pd.Series, pd.Series]:
    """(momentum up/stable/down, delta_30d): the engine's trend when recorded, else the change since the last run."""
    momentum, delta_30d = parse_trend(trend)
    from_delta = pd.Series(
        np.select([delta_prev > stable_within, delta_prev < -stable_within], ["up", "down"], "stable"), index=delta_prev.index
    ).where(delta_prev.notna(), pd.NA).astype("string")
    return momentum.fillna(from_delta).astype("string"), delta_30d


# ----------------------------------------------------------------------------- loading


def _latest_run(store: StateStore) -> tuple[str | None, pd.DataFrame, dict[str, Any]]:
    """The most recent run that recorded scores, every scored run in order, and its runs row (summary parsed)."""
    sh = store.tables["score_history"]
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(sh.c.run_id, func.max(sh.c.scored_at).label("scored_at"), func.count().label("accounts")).group_by(sh.c.run_id)
        ).all()
    runs = pd.DataFrame(rows, columns=["run_id", "scored_at", "accounts"])
    if runs.empty:
        return None, runs, {}
    runs["scored_at"] = pd.to_datetime(runs["scored_at"])
    runs = runs.sort_values(["scored_at", "run_id"]).reset_index(drop=True)
    run_id = str(runs["run_id"].iloc[-1])
    row = _read(store, "runs", lambda t: t.c.run_id == run_id)
    info: dict[str, Any] = {"run_id": run_id, "scored_at": runs["scored_at"].iloc[-1].to_pydatetime()}
    if len(row):
        r = row.iloc[0].to_dict()
        info.update({k: r[k] for k in ("started_at", "finished_at", "mode", "status", "exit_code")})
        try:
            info["summary"] = json.loads(r["summary_json"]) if r.get("summary_json") else {}
        except ValueError:
            info["summary"] = {}
    info.setdefault("summary", {})
    return run_id, runs, info


def _history(store: StateStore) -> pd.DataFrame:
    """Every run's (account_id, scored_at, score, band, run_id); the trend and the history charts read it."""
    sh = store.tables["score_history"]
    with store.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(select(sh.c.account_id, sh.c.scored_at, sh.c.score, sh.c.band, sh.c.run_id))]
    frame = pd.DataFrame.from_records(rows, columns=["account_id", "scored_at", "score", "band", "run_id"])
    frame["scored_at"] = pd.to_datetime(frame["scored_at"])
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce").astype("float64")
    return frame


def _replica_frame(store: StateStore, kind: str, columns: list[str]) -> pd.DataFrame:
    """The live canonical records of one object kind from every CRM, only `columns` (plus `crm`)."""
    rep = store.tables["replica"]
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(rep.c.crm, rep.c.data_json).where(rep.c.object == kind, rep.c.deleted == False)  # noqa: E712
        ).all()
    if not rows:
        return pd.DataFrame()
    records = _json_objects(pd.Series([r[1] for r in rows], dtype=object))
    # column lists instead of DataFrame(list of dicts): pandas' key inference over 50k dicts is the slow part
    data = {c: [rec.get(c) if rec else None for rec in records] for c in columns}
    frame = pd.DataFrame(data)
    frame["crm"] = [r[0] for r in rows]
    return frame


def _accounts(store: StateStore, settings: Settings, run_id: str, history: pd.DataFrame) -> pd.DataFrame:
    latest = _read(store, "score_history", lambda t: t.c.run_id == run_id)
    keep = ["account_id", "crm", "name", "segment", "arr", "renewal_date", "owner_email", "csm_sentiment", "customer_since"]
    replica = _replica_frame(store, ACCOUNT_OBJECT, [c for c in keep if c != "crm"])
    if replica.empty:
        replica = pd.DataFrame(columns=keep)
    replica = replica[[c for c in keep if c in replica.columns]].drop_duplicates("account_id", keep="last")
    frame = latest.merge(replica, on="account_id", how="left")
    for col in keep:
        if col not in frame.columns:
            frame[col] = pd.NA
    frame["name"] = frame["name"].astype("string").fillna(frame["account_id"].astype("string"))
    frame["arr"] = pd.to_numeric(frame["arr"], errors="coerce").astype("float64")
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce").astype("float64")
    frame["confidence"] = pd.to_numeric(frame["confidence"], errors="coerce").astype("float64")
    frame["owner_email"] = frame["owner_email"].astype("string").fillna(NO_OWNER)
    frame["renewal_date"] = pd.to_datetime(frame["renewal_date"], errors="coerce", utc=True, format="ISO8601").dt.tz_localize(None)
    if "crm" not in frame.columns or frame["crm"].isna().all():
        frame["crm"] = np.where(frame["account_id"].astype(str).str.startswith("hs:"), "hubspot", "salesforce")
    frame["drivers"] = [_drivers_text(v) for v in frame["drivers"]]
    frame["dimensions"] = [d if isinstance(d, dict) else {} for d in _json_objects(frame["dimension_json"])]

    # change since the previous scored run of the same account
    earlier = history[history["run_id"] != run_id].sort_values("scored_at")
    previous = earlier.drop_duplicates("account_id", keep="last").set_index("account_id")["score"]
    frame["previous_score"] = frame["account_id"].map(previous).astype("float64")
    frame["delta"] = frame["score"] - frame["previous_score"]
    frame["momentum"], frame["delta_30d"] = _momentum(frame["delta"], frame["trend"], settings.model.trend_stable_within)
    return frame


def _adjusted_from_pushed(store: StateStore, settings: Settings, opps: pd.DataFrame) -> pd.Series | None:
    """The adjusted probability each CRM confirmed (the write-back field named in `mapping.<crm>.opportunity.write`)."""
    fields = {
        crm: getattr(settings.mapping, crm).opportunity.write.get("adjusted_probability")
        for crm in ("salesforce", "hubspot")
    }
    fields = {crm: f for crm, f in fields.items() if f}
    if not fields:
        return None
    pushed = store.tables["pushed"]
    with store.engine.connect() as conn:
        found = conn.execute(
            select(pushed.c.crm, pushed.c.record_id, pushed.c.field, pushed.c.value_json).where(
                pushed.c.object == OPEN_OPPORTUNITY_OBJECT, pushed.c.field.in_(sorted(set(fields.values())))
            )
        ).all()
    if not found:
        return None
    rows = pd.DataFrame.from_records([tuple(r) for r in found], columns=["crm", "record_id", "field", "value_json"])
    rows = rows[[fields.get(c) == f for c, f in zip(rows["crm"], rows["field"])]]
    # written as a 0-1 fraction for both CRMs, like the canonical probability (sync/writeback.py)
    values = pd.to_numeric(pd.Series(_json_objects(rows["value_json"]), index=rows.index), errors="coerce")
    by_id = pd.Series(values.to_numpy(), index=rows["record_id"].astype(str).to_numpy())
    by_id = by_id[~by_id.index.duplicated(keep="last")]
    adjusted = opps["opportunity_id"].astype(str).map(by_id)
    # an opportunity with nothing confirmed (unscored account, pending retry) counts at its CRM probability
    return adjusted.fillna(opps["probability"]) if adjusted.notna().any() else None


def _adjusted_from_engine(settings: Settings, opps: pd.DataFrame, accounts: pd.DataFrame) -> pd.Series | None:
    """Recompute with the engine's forecast adjustment when nothing was written back (dry runs, first runs)."""
    try:
        from healthsync.engine.forecast import adjust_opportunities
    except ImportError:
        return None
    scores = accounts[["account_id", "score", "band", "delta_30d"]]
    try:
        out = adjust_opportunities(opps, scores, settings.forecast, settings.model.insufficient_band)
    except Exception:  # noqa: BLE001 - the report must still render; the note says why the column is empty
        return None
    if not isinstance(out, pd.DataFrame) or "adjusted_probability" not in out.columns:
        return None
    if "opportunity_id" in out.columns:
        return opps["opportunity_id"].map(out.drop_duplicates("opportunity_id").set_index("opportunity_id")["adjusted_probability"])
    return pd.Series(out["adjusted_probability"].to_numpy(), index=opps.index)


def _opportunities(store: StateStore, settings: Settings, accounts: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    cols = ["opportunity_id", "account_id", "name", "stage", "amount", "probability", "close_date", "type", "forecast_category", "owner_email"]
    frame = _replica_frame(store, OPEN_OPPORTUNITY_OBJECT, cols + ["is_closed"])
    if frame.empty:
        return pd.DataFrame(columns=cols + ["crm", "adjusted_probability", "quarter"]), "none"
    for c in cols + ["is_closed"]:
        if c not in frame.columns:
            frame[c] = pd.NA
    closed = frame["is_closed"].map(lambda v: str(v).lower() in ("true", "1")) if frame["is_closed"].dtype == object else frame["is_closed"].fillna(False).astype(bool)
    frame = frame[~closed.astype(bool)].copy()
    frame = frame[frame["account_id"].isin(accounts["account_id"])].reset_index(drop=True)
    frame["amount"] = pd.to_numeric(frame["amount"], errors="coerce").astype("float64")
    frame["probability"] = pd.to_numeric(frame["probability"], errors="coerce").astype("float64")
    frame["close_date"] = pd.to_datetime(frame["close_date"], errors="coerce", utc=True, format="ISO8601").dt.tz_localize(None)
    frame["quarter"] = frame["close_date"].dt.to_period("Q").astype("string")
    source = "none"
    adjusted = _adjusted_from_pushed(store, settings, frame) if len(frame) else None
    if adjusted is not None:
        source = "crm write-back"
    else:
        adjusted = _adjusted_from_engine(settings, frame, accounts) if len(frame) else None
        if adjusted is not None:
            source = "engine"
    frame["adjusted_probability"] = adjusted.astype("float64") if adjusted is not None else np.nan
    return frame[cols + ["crm", "adjusted_probability", "quarter"]], source


def forecast_by_quarter(opps: pd.DataFrame) -> pd.DataFrame:
    """Expected amount per close quarter before (base probability) and after the health adjustment."""
    cols = ["quarter", "opportunities", "amount", "base_expected", "adjusted_expected"]
    if opps.empty:
        return pd.DataFrame(columns=cols)
    frame = opps.assign(
        base_expected=opps["amount"] * opps["probability"],
        adjusted_expected=opps["amount"] * opps["adjusted_probability"],
    )
    out = (
        frame.dropna(subset=["quarter"])
        .groupby("quarter", sort=True)
        .agg(
            opportunities=("opportunity_id", "size"),
            amount=("amount", "sum"),
            base_expected=("base_expected", "sum"),
            adjusted_expected=("adjusted_expected", lambda s: s.sum(min_count=1)),
        )
        .reset_index()
    )
    return out[cols]


def band_summary(accounts: pd.DataFrame, bands: list[BandInfo]) -> pd.DataFrame:
    """Accounts and ARR per band, every band listed (zero rows included) in worst -> best order."""
    total = len(accounts)
    total_arr = float(accounts["arr"].sum()) if total else 0.0
    counts = accounts.groupby("band").size() if total else pd.Series(dtype=int)
    arr = accounts.groupby("band")["arr"].sum() if total else pd.Series(dtype=float)
    rows = []
    for b in bands:
        n = int(counts.get(b.name, 0))
        a = float(arr.get(b.name, 0.0))
        rows.append(
            {
                "band": b.name,
                "color": b.color,
                "at_risk": b.at_risk,
                "accounts": n,
                "share": n / total if total else 0.0,
                "arr": a,
                "arr_share": a / total_arr if total_arr else 0.0,
            }
        )
    return pd.DataFrame(rows, columns=["band", "color", "at_risk", "accounts", "share", "arr", "arr_share"])


def portfolio_trend(history: pd.DataFrame, bands: list[BandInfo]) -> pd.DataFrame:
    """Mean score and accounts per band for every scored run, oldest first."""
    if history.empty:
        return pd.DataFrame(columns=["run_id", "scored_at", "accounts", "mean_score"] + [b.name for b in bands])
    per_run = history.groupby("run_id").agg(scored_at=("scored_at", "max"), accounts=("account_id", "size"), mean_score=("score", "mean"))
    counts = history.pivot_table(index="run_id", columns="band", values="account_id", aggfunc="size", fill_value=0)
    for b in bands:
        per_run[b.name] = counts[b.name] if b.name in counts.columns else 0
    return per_run.reset_index().sort_values(["scored_at", "run_id"]).reset_index(drop=True)


def priority_order(accounts: pd.DataFrame, bands: list[BandInfo]) -> pd.DataFrame:
    """Worst band first, then the steepest decline (30-day, else since the last run), then the biggest ARR."""
    rank = {b.name: b.rank for b in bands}
    decline = accounts["delta_30d"].fillna(accounts["delta"]).fillna(0.0)
    return (
        accounts.assign(_rank=accounts["band"].map(rank).fillna(len(bands)), _delta=decline, _arr=accounts["arr"].fillna(0.0))
        .sort_values(["_rank", "_delta", "_arr", "account_id"], ascending=[True, True, False, True])
        .drop(columns=["_rank", "_delta", "_arr"])
    )


def top_at_risk(accounts: pd.DataFrame, bands: list[BandInfo], n: int = TOP_AT_RISK) -> pd.DataFrame:
    """The at-risk-band accounts with the most ARR (ties broken by account id, so the list is stable)."""
    risky = {b.name for b in bands if b.at_risk}
    frame = accounts[accounts["band"].isin(risky)]
    return frame.assign(_arr=frame["arr"].fillna(0.0)).sort_values(["_arr", "account_id"], ascending=[False, True]).drop(columns="_arr").head(n)


def renewals_at_risk(accounts: pd.DataFrame, bands: list[BandInfo], now: datetime, days: int = RENEWAL_HORIZON_DAYS) -> pd.DataFrame:
    """Renewals due in the next `days` whose account is not in the healthiest band, soonest first."""
    configured = [b.name for b in bands if b.configured]
    healthiest = configured[-1] if configured else None
    start = _naive_ts(now).normalize()
    renewal = pd.to_datetime(accounts["renewal_date"], errors="coerce")
    due = renewal.between(start, start + pd.Timedelta(days=days))
    frame = accounts[due & (accounts["band"] != healthiest)]
    return frame.assign(days_to_renewal=(renewal[frame.index] - start).dt.days).sort_values(["renewal_date", "account_id"])


def _tasks(store: StateStore, accounts: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """Open playbook episodes with their CRM task and its SLA state at `now`."""
    eps = _read(store, "episodes", lambda t: t.c.status == "open")
    cols = ["episode_id", "account_id", "name", "playbook", "owner_email", "opened_at", "task_id", "task_due_at", "task_status", "sla_status", "hours_left"]
    if eps.empty:
        return pd.DataFrame(columns=cols)
    eps = eps[eps["account_id"].isin(accounts["account_id"])].copy()
    eps = eps.merge(accounts[["account_id", "name"]], on="account_id", how="left")
    eps["owner_email"] = eps["owner_email"].astype("string").fillna(NO_OWNER)
    due = pd.to_datetime(eps["task_due_at"])
    hours_left = (due - _naive_ts(now)).dt.total_seconds() / 3600
    window = (due - pd.to_datetime(eps["opened_at"])).dt.total_seconds() / 3600
    soon = (window * DUE_SOON_SHARE).clip(lower=DUE_SOON_MIN_HOURS).fillna(DUE_SOON_HOURS * DUE_SOON_SHARE)
    done = eps["task_status"].astype("string").str.lower().isin(["completed", "closed", "done"]).fillna(False).astype(bool)
    eps["sla_status"] = np.select(
        [done, due.isna(), hours_left < 0, hours_left <= soon],
        ["completed", "no due date", "breached", "due soon"],
        "on time",
    )
    eps["hours_left"] = hours_left
    order = {"breached": 0, "due soon": 1, "on time": 2, "no due date": 3, "completed": 4}
    eps = eps.assign(_o=eps["sla_status"].map(order)).sort_values(["_o", "task_due_at", "episode_id"]).drop(columns="_o")
    return eps[cols].reset_index(drop=True)


def _escalations(store: StateStore, accounts: pd.DataFrame) -> pd.DataFrame:
    cols = ["episode_id", "account_id", "name", "playbook", "owner_email", "level", "kind", "recipient", "channel", "sent_at"]
    esc = _read(store, "escalations")
    if esc.empty:
        return pd.DataFrame(columns=cols)
    eps = _read(store, "episodes")[["episode_id", "account_id", "playbook", "owner_email"]]
    esc = esc.merge(eps, on="episode_id", how="left")
    esc = esc[esc["account_id"].isin(accounts["account_id"])]
    esc = esc.merge(accounts[["account_id", "name"]], on="account_id", how="left")
    esc["owner_email"] = esc["owner_email"].astype("string").fillna(NO_OWNER)
    return esc.sort_values(["sent_at", "episode_id"], ascending=[False, True], na_position="first")[cols].reset_index(drop=True)


def _freshness(store: StateStore, now: datetime) -> pd.DataFrame:
    """Per CRM object: live records, last change stored, cursor and when it last moved."""
    rep = store.tables["replica"]
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(rep.c.crm, rep.c.object, func.count().label("records"), func.max(rep.c.modified_at).label("last_modified"))
            .where(rep.c.deleted == False)  # noqa: E712
            .group_by(rep.c.crm, rep.c.object)
        ).all()
    counts = pd.DataFrame(rows, columns=["crm", "object", "records", "last_modified"])
    cur = _read(store, "cursors")
    frame = counts.merge(cur, on=["crm", "object"], how="outer") if len(cur) else counts.assign(cursor_value=pd.NaT, updated_at=pd.NaT)
    if frame.empty:
        return pd.DataFrame(columns=["crm", "object", "records", "last_modified", "cursor_value", "updated_at", "age_hours", "stale"])
    frame["records"] = frame["records"].fillna(0).astype(int)
    last_pull = pd.to_datetime(frame["updated_at"]).fillna(pd.to_datetime(frame["last_modified"]))
    # never negative: `now` may be the sandbox clock while pulls are stamped with real time
    frame["age_hours"] = ((_naive_ts(now) - last_pull).dt.total_seconds() / 3600).clip(lower=0)
    frame["stale"] = (frame["age_hours"] > STALE_AFTER_HOURS) | frame["age_hours"].isna()
    return frame.sort_values(["crm", "object"]).reset_index(drop=True)


def _drift(store: StateStore, run_id: str | None, summary: dict) -> tuple[pd.DataFrame, list[str]]:
    frame = _read(store, "drift", lambda t: t.c.run_id == run_id) if run_id else pd.DataFrame()
    if frame.empty:
        latest = _read(store, "drift")
        if len(latest):
            frame = latest[latest["run_id"] == latest["run_id"].iloc[-1]]
    if frame.empty:
        frame = pd.DataFrame(columns=["run_id", "metric", "psi", "warning"])
    frame = frame.assign(warning=frame["warning"].fillna(False).astype(bool)).sort_values(["warning", "psi"], ascending=[False, False])
    warnings = [str(w) for w in (summary.get("drift_warnings") or []) if w] if isinstance(summary.get("drift_warnings"), list) else []
    return frame.reset_index(drop=True), warnings


def _backtest(store: StateStore) -> dict[str, Any] | None:
    rows = _read(store, "backtests")
    if rows.empty:
        return None
    row = rows.sort_values("created_at", na_position="first").iloc[-1]
    try:
        report = json.loads(row["report_json"]) if row["report_json"] else {}
    except ValueError:
        return None
    return {"run_id": row["run_id"], "created_at": row["created_at"], "report": report if isinstance(report, dict) else {"value": report}}


#: The backtest report's contract keys (engine/backtest.py) with the label a reader needs.
BACKTEST_FIGURES = (
    ("auc", "AUC (ranks churners below renewers)"),
    ("pr_auc", "PR-AUC"),
    ("brier", "Brier score (lower is better)"),
    ("precision", "Precision: flagged at-risk that churned"),
    ("recall", "Recall: churners flagged at-risk"),
    ("f1", "F1"),
    ("accuracy", "Accuracy"),
    ("forecast.mape_before", "Forecast MAPE before health adjustment (%)"),
    ("forecast.mape_after", "Forecast MAPE after health adjustment (%)"),
    ("forecast.mae_before", "Forecast MAE before"),
    ("forecast.mae_after", "Forecast MAE after"),
    ("rows", "Account snapshots tested"),
    ("churned", "Churned in the horizon"),
)


def backtest_metrics(report: dict[str, Any], limit: int = 24) -> list[tuple[str, Any]]:
    """The backtest's headline figures with labels; any other report is flattened (`a.b`) to its scalars."""
    def lookup(dotted: str) -> Any:
        node: Any = report
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    known = [(label, lookup(key)) for key, label in BACKTEST_FIGURES]
    known = [(label, v) for label, v in known if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if known:
        return known
    out: list[tuple[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if len(out) >= limit:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, bool) or value is None:
            return
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out.append((prefix, value))

    walk("", report)
    return out


def select_drill_down(accounts: pd.DataFrame, bands: list[BandInfo], cap: int = DRILL_DOWN_CAP) -> tuple[pd.DataFrame, int]:
    """At-risk accounts by ARR, then declining ones, then the rest by ARR; at most `cap` of them."""
    risky = {b.name for b in bands if b.at_risk}
    declining = (accounts["momentum"] == "down").fillna(False).to_numpy(dtype=bool)
    key = np.select([accounts["band"].isin(risky).to_numpy(dtype=bool), declining], [0, 1], 2)
    ordered = accounts.assign(_k=key, _arr=accounts["arr"].fillna(0.0)).sort_values(["_k", "_arr", "account_id"], ascending=[True, False, True])
    qualified = int((key < 2).sum())
    return ordered.drop(columns=["_k", "_arr"]).head(cap), qualified


def load_report_data(store: StateStore, settings: Settings, now: datetime | None = None, owner: str | None = None,
                     drill_down_cap: int = DRILL_DOWN_CAP) -> ReportData:
    """Read the state store into the report's frames (`owner` limits everything to that owner's accounts)."""
    now = _aware(now) or datetime.now(timezone.utc)
    run_id, _runs, run = _latest_run(store)
    history = _history(store) if run_id else pd.DataFrame(columns=["account_id", "scored_at", "score", "band", "run_id"])
    notes: list[str] = []
    if run_id:
        accounts = _accounts(store, settings, run_id, history)
    else:
        accounts = pd.DataFrame(columns=["account_id", "crm", "name", "segment", "arr", "renewal_date", "owner_email", "score", "band",
                                         "confidence", "drivers", "dimensions", "trend", "previous_score", "delta", "momentum",
                                         "delta_30d", "csm_sentiment"])
        notes.append("No scored run in the state store yet: run `healthsync run` first.")
    if owner:
        accounts = accounts[accounts["owner_email"].str.lower() == owner.lower()].reset_index(drop=True)
        history = history[history["account_id"].isin(accounts["account_id"])]
        if accounts.empty and run_id:
            notes.append(f"No scored accounts are owned by {owner}.")
    bands = band_infos(settings, sorted(set(history["band"].dropna().astype(str)) | set(accounts["band"].dropna().astype(str))))
    opps, source = _opportunities(store, settings, accounts) if run_id else (pd.DataFrame(), "none")
    if opps.empty:
        opps = pd.DataFrame(columns=["opportunity_id", "account_id", "name", "stage", "amount", "probability", "close_date", "type",
                                     "forecast_category", "owner_email", "crm", "adjusted_probability", "quarter"])
    if source == "none" and len(opps):
        notes.append("No health-adjusted probabilities yet (nothing written back and the engine's forecast is unavailable).")
    drill, qualified = select_drill_down(accounts, bands, drill_down_cap)
    drift, drift_warnings = _drift(store, run_id, run.get("summary", {}))
    return ReportData(
        now=now,
        owner=owner,
        run=run,
        bands=bands,
        accounts=accounts,
        history=history,
        trend=portfolio_trend(history, bands),
        band_summary=band_summary(accounts, bands),
        opportunities=opps,
        forecast=forecast_by_quarter(opps),
        tasks=_tasks(store, accounts, now),
        escalations=_escalations(store, accounts),
        freshness=_freshness(store, now),
        drift=drift,
        drift_warnings=drift_warnings,
        backtest=_backtest(store),
        top_at_risk=top_at_risk(accounts, bands),
        renewals_at_risk=renewals_at_risk(accounts, bands, now),
        drill_down=drill,
        drill_down_total=max(qualified, len(drill)),
        adjusted_source=source,
        notes=notes,
        data_quality=_data_quality(store),
    )


def _data_quality(store: StateStore) -> dict[str, Any]:
    from healthsync.sync.data_quality import latest

    try:
        return latest(store)
    except Exception:  # noqa: BLE001 - a store from before the data-quality revision: the section says so
        return {}
