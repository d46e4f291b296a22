"""The report's numbers: the state store read into DataFrames (read-only).

Why a module of its own: the page (render.py, assets/report.js) only shapes and
filters, so every figure a reader sees starts here, once, from the state
store, and can be tested without a browser.

Sources:
    score_history   the latest run's row per account is "now"; the last run of each UTC day is the trend
    replica         canonical accounts, open opportunities, owners (names), tickets (the QBR page)
    crm_instances   each CRM's address, for links to its records (links.py)
    pushed          the adjusted probability the CRM confirmed per opportunity
    runs            the latest run's summary (mode, drift warnings)
    episodes, escalations   playbook tasks with their SLA clock, Slack escalations
    cursors         data freshness per CRM object
    drift, backtests, data_quality   model drift, accuracy and per-source data quality
    usage_history   daily usage snapshots (the QBR page's trends)

`now` is passed in (the sandbox clock in sandbox mode), so SLA states and
renewal windows are reproducible.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from healthsync.config.settings import Settings
from healthsync.connectors.base import ConfigurationError
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
#: The trend covers at most this much score history (issue 17: daily points, up to a year).
HISTORY_DAYS = 365
OPEN_OPPORTUNITY_OBJECT = "opportunities"
ACCOUNT_OBJECT = "accounts"
OWNER_OBJECT = "owners"
NO_OWNER = "(no owner)"
NO_VALUE = "(none)"


class NoMatchError(ConfigurationError):
    """`--owner` / `--account` named nothing in the state store (exit 2, with the nearest known values)."""


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
    owner: str | None  # the e-mail the report is limited to (`--owner`)
    focus: str | None  # the account the report is limited to and opens on (`--account`)
    run: dict[str, Any]
    bands: list[BandInfo]
    accounts: pd.DataFrame  # one row per scored account of the latest run, in priority order
    history: pd.DataFrame  # account_id, day (since 1970-01-01), score, band: the last run of each UTC day, HISTORY_DAYS back
    scored_days: int  # distinct days with a scored run (1: no trend yet)
    opportunities: pd.DataFrame  # open opportunities with base and adjusted probability
    tasks: pd.DataFrame  # open playbook tasks with sla_status
    escalations: pd.DataFrame
    freshness: pd.DataFrame
    drift: pd.DataFrame
    drift_warnings: list[str]
    backtest: dict[str, Any] | None
    owners: dict[str, str]  # e-mail (lower case) -> name, from the CRMs' owner/user APIs
    instances: dict[str, dict]  # crm -> what it said about itself (links.py)
    adjusted_source: str  # where adjusted probabilities came from ("crm write-back", "engine", "none")
    dimensions: list[str] = field(default_factory=list)  # dimension names, in the model's order
    data_quality: dict[str, Any] = field(default_factory=dict)  # the last run's KPIs per source
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def naive_ts(value: datetime) -> pd.Timestamp:
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


def nearest(value: str, known: list[str], n: int = 3) -> list[str]:
    """The known values closest to `value` (difflib), for a "did you mean" message."""
    by_lower: dict[str, str] = {}
    for k in known:
        by_lower.setdefault(k.lower(), k)
    close = difflib.get_close_matches(value.lower(), list(by_lower), n=n, cutoff=0.4)
    return [by_lower[c] for c in close]


def no_match(flag: str, value: str, what: str, known: list[str]) -> NoMatchError:
    near = nearest(value, known)
    hint = f"; nearest known: {', '.join(near)}" if near else (f"; known {what}s: {', '.join(sorted(known)[:5])}" if known else "")
    return NoMatchError(f"{flag} {value!r}: no {what} of the last scored run matches{hint}")


# ----------------------------------------------------------------------------- loading


def _latest_run(store: StateStore) -> tuple[str | None, dict[str, Any]]:
    """The most recent run that recorded scores and its runs row (summary parsed)."""
    sh = store.tables["score_history"]
    with store.engine.connect() as conn:  # the newest score first: read from the scored_at index
        row = conn.execute(select(sh.c.run_id, sh.c.scored_at).order_by(sh.c.scored_at.desc(), sh.c.run_id.desc()).limit(1)).first()
    if row is None:
        return None, {}
    run_id = str(row.run_id)
    info: dict[str, Any] = {"run_id": run_id, "scored_at": pd.Timestamp(row.scored_at).to_pydatetime()}
    runs = _read(store, "runs", lambda t: t.c.run_id == run_id)
    if len(runs):
        r = runs.iloc[0].to_dict()
        info.update({k: r[k] for k in ("started_at", "finished_at", "mode", "status", "exit_code")})
        try:
            info["summary"] = json.loads(r["summary_json"]) if r.get("summary_json") else {}
        except ValueError:
            info["summary"] = {}
    info.setdefault("summary", {})
    return run_id, info


EPOCH = pd.Timestamp("1970-01-01")


def empty_history() -> pd.DataFrame:
    return pd.DataFrame({"account_id": pd.Categorical([]), "day": pd.Series([], dtype="int64"),
                         "score": pd.Series([], dtype="float64"), "band": pd.Categorical([])})


def _history(store: StateStore, now: datetime, days: int = HISTORY_DAYS) -> tuple[pd.DataFrame, int]:
    """The last scored run of each UTC day per account over the last `days` days, and how many days had a run.

    Columns: account_id (categorical), day (days since 1970-01-01), score, band (categorical); sorted by
    account, then day. A year of 10,000 accounts is 3.65 million rows: they are read from the
    `ix_score_history_scored_at` index straight off the driver's cursor (no per-row objects beyond the
    driver's tuples) and reduced with factorised codes, never row by row.
    """
    sh = store.tables["score_history"]
    since = (naive_ts(now).normalize() - pd.Timedelta(days=days - 1)).to_pydatetime()
    # only indexed columns: SQLite answers from the index alone (two runs stamped the same instant: either wins)
    query = select(sh.c.account_id, sh.c.scored_at, sh.c.score, sh.c.band).where(sh.c.scored_at >= since)
    with store.engine.connect() as conn:
        result = conn.execute(query)
        rows = result.cursor.fetchall()  # the DBAPI's own tuples: SQLite hands timestamps back as ISO text
    if not rows:
        return empty_history(), 0
    table = np.array(rows, dtype=object)  # one C-level pass, then whole columns
    del rows
    acct_codes, acct_names = pd.factorize(table[:, 0])
    stamp_codes, stamp_values = pd.factorize(table[:, 1], sort=True)  # ISO text sorts as time does
    band_codes, band_names = pd.factorize(table[:, 3])
    as_text = isinstance(stamp_values[0], str)  # SQLite: ISO text; PostgreSQL drivers: datetimes
    stamp_ts = pd.to_datetime(pd.Index(stamp_values), format="ISO8601") if as_text else pd.to_datetime(pd.Index(stamp_values))
    stamp_days = ((stamp_ts.normalize() - EPOCH).days).to_numpy(dtype=np.int64)
    day = stamp_days[stamp_codes]
    score = pd.to_numeric(table[:, 2], errors="coerce").astype("float64")
    del table
    order = np.lexsort((stamp_codes, day, acct_codes))
    acct_s, day_s = acct_codes[order], day[order]
    last = np.ones(len(order), dtype=bool)  # the last row of each (account, day) in this order: the day's last run
    last[:-1] = (acct_s[1:] != acct_s[:-1]) | (day_s[1:] != day_s[:-1])
    keep = order[last]
    frame = pd.DataFrame({
        "account_id": pd.Categorical.from_codes(acct_codes[keep], categories=pd.Index(acct_names, dtype=object)),
        "day": day[keep],
        "score": score[keep],
        "band": pd.Categorical.from_codes(band_codes[keep], categories=pd.Index(band_names, dtype=object)) if len(band_names)
        else pd.Categorical([None] * int(last.sum())),
    })
    return frame, int(len(np.unique(day)))


def replica_frame(store: StateStore, kind: str, columns: list[str], crm: str | None = None) -> pd.DataFrame:
    """The live canonical records of one object kind (every CRM, or one), only `columns` (plus `crm`)."""
    rep = store.tables["replica"]
    query = select(rep.c.crm, rep.c.data_json).where(rep.c.object == kind, rep.c.deleted == False)  # noqa: E712
    if crm:
        query = query.where(rep.c.crm == crm)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        return pd.DataFrame(columns=columns + ["crm"])
    records = _json_objects(pd.Series([r[1] for r in rows], dtype=object))
    # column lists instead of DataFrame(list of dicts): pandas' key inference over 50k dicts is the slow part
    data = {c: [rec.get(c) if rec else None for rec in records] for c in columns}
    frame = pd.DataFrame(data)
    frame["crm"] = [r[0] for r in rows]
    return frame


def owner_names(store: StateStore) -> dict[str, str]:
    """e-mail (lower case) -> the name a CRM's owner/user API gives it (sync/crm_directory.py)."""
    frame = replica_frame(store, OWNER_OBJECT, ["email", "name"])
    out: dict[str, str] = {}
    for email, name in zip(frame["email"], frame["name"]):
        if email and name and str(email).lower() not in out:
            out[str(email).lower()] = str(name)
    return out


def lifecycle_labels(customer_since: pd.Series, renewal_date: pd.Series, settings: Settings, now: datetime) -> pd.Series:
    """The lifecycle stage of seed 001 per account: "renewal window" inside it, else the tenure stage.

    Same rules as the engine's (engine/lifecycle.py): tenure from `customer_since`, the renewal
    window 0 <= days to renewal <= `model.lifecycle.renewal_window.days`; unknown tenure -> NO_VALUE.
    """
    from healthsync.engine.lifecycle import lifecycle_stage

    today = naive_ts(now).normalize()
    since = pd.to_datetime(customer_since, errors="coerce", utc=True, format="ISO8601").dt.tz_localize(None)
    tenure = ((today - since).dt.days).astype("float64")
    tenure = tenure.where(tenure >= 0)
    stage = lifecycle_stage(pd.DataFrame({"tenure_days": tenure.to_numpy()}), settings.model).astype("string").to_numpy(dtype=object)
    labels = pd.Series(stage, index=customer_since.index, dtype=object)
    labels = labels.where(labels.notna(), NO_VALUE)
    window = settings.model.lifecycle.renewal_window
    if window is not None:
        days = (pd.to_datetime(renewal_date, errors="coerce") - today).dt.days
        labels = labels.where(~((days >= 0) & (days <= window.days)).fillna(False), "renewal window")
    return labels.astype(object)


def renewal_factor(accounts: pd.DataFrame, settings: Settings) -> pd.Series:
    """Share of each account's ARR expected to renew given its health: the forecast adjustment of a renewal at
    probability 1 (forecast.method, max_swing), not renormalised, so health can only take away.

    NaN where the account is not scored or the forecast adjustment is off / unavailable.
    """
    if accounts.empty or not settings.forecast.enabled:
        return pd.Series(np.nan, index=accounts.index, dtype="float64")
    from healthsync.engine.forecast import adjust_opportunities

    renewals = pd.DataFrame({
        "opportunity_id": accounts["account_id"].astype(str).to_numpy(),
        "account_id": accounts["account_id"].astype(str).to_numpy(),
        "probability": 1.0, "amount": 1.0, "type": "renewal", "is_closed": False,
    })
    health = accounts[["account_id", "score", "band", "delta_30d"]].assign(
        delta_30d=accounts["delta_30d"].fillna(accounts["delta"]), delta_90d=np.nan)
    try:
        out = adjust_opportunities(renewals, health, settings.forecast.model_copy(update={"renormalise": False}),
                                   settings.model.insufficient_band)
    except (ValueError, KeyError, TypeError):
        return pd.Series(np.nan, index=accounts.index, dtype="float64")
    factor = pd.Series(out["adjusted_probability"].to_numpy(dtype="float64"), index=out["account_id"].to_numpy())
    unusable = accounts["score"].isna() | (accounts["band"] == settings.model.insufficient_band)
    return pd.Series(accounts["account_id"].map(factor).to_numpy(dtype="float64"), index=accounts.index).where(~unusable)


def _accounts(store: StateStore, settings: Settings, run_id: str, history: pd.DataFrame, now: datetime) -> pd.DataFrame:
    latest = _read(store, "score_history", lambda t: t.c.run_id == run_id)
    keep = ["account_id", "name", "segment", "arr", "renewal_date", "owner_email", "csm_sentiment", "customer_since"]
    replica = replica_frame(store, ACCOUNT_OBJECT, keep)
    replica = replica.drop_duplicates("account_id", keep="last")
    frame = latest.merge(replica, on="account_id", how="left")
    frame["name"] = frame["name"].astype("string").fillna(frame["account_id"].astype("string")).astype(object)
    frame["segment"] = frame["segment"].astype("string").fillna(NO_VALUE).astype(object)
    frame["arr"] = pd.to_numeric(frame["arr"], errors="coerce").astype("float64")
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce").astype("float64")
    frame["confidence"] = pd.to_numeric(frame["confidence"], errors="coerce").astype("float64")
    frame["owner_email"] = frame["owner_email"].astype("string").fillna(NO_OWNER).astype(object)
    frame["renewal_date"] = pd.to_datetime(frame["renewal_date"], errors="coerce", utc=True, format="ISO8601").dt.tz_localize(None)
    missing_crm = frame["crm"].isna()
    frame.loc[missing_crm, "crm"] = np.where(frame.loc[missing_crm, "account_id"].astype(str).str.startswith("hs:"), "hubspot", "salesforce")
    frame["drivers"] = [_drivers_text(v) for v in frame["drivers"]]
    frame["dimensions"] = [d if isinstance(d, dict) else {} for d in _json_objects(frame["dimension_json"])]
    frame["lifecycle"] = lifecycle_labels(frame["customer_since"], frame["renewal_date"], settings, now)

    # change since the previous scored day of the same account (history is sorted by account, then day)
    today = (pd.Timestamp(frame["scored_at"].max()).normalize() - EPOCH).days if len(frame) else None
    earlier = history[history["day"] < today] if today is not None else history.iloc[0:0]
    previous = earlier.drop_duplicates("account_id", keep="last")
    previous = pd.Series(previous["score"].to_numpy(), index=previous["account_id"].astype(object).to_numpy())
    frame["previous_score"] = frame["account_id"].map(previous).astype("float64")
    frame["delta"] = frame["score"] - frame["previous_score"]
    frame["momentum"], frame["delta_30d"] = _momentum(frame["delta"], frame["trend"], settings.model.trend_stable_within)
    frame["renewal_factor"] = renewal_factor(frame, settings)
    return frame.drop(columns=["dimension_json"])


def priority_order(accounts: pd.DataFrame, bands: list[BandInfo]) -> pd.DataFrame:
    """Worst band first, then the steepest decline (30-day, else since the last run), then the biggest ARR."""
    rank = {b.name: b.rank for b in bands}
    decline = accounts["delta_30d"].fillna(accounts["delta"]).fillna(0.0)
    return (
        accounts.assign(_rank=accounts["band"].map(rank).fillna(len(bands)), _delta=decline, _arr=accounts["arr"].fillna(0.0))
        .sort_values(["_rank", "_delta", "_arr", "account_id"], ascending=[True, True, False, True])
        .drop(columns=["_rank", "_delta", "_arr"])
        .reset_index(drop=True)
    )


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
    from healthsync.engine.forecast import adjust_opportunities

    scores = accounts[["account_id", "score", "band", "delta_30d"]]
    try:
        out = adjust_opportunities(opps, scores, settings.forecast, settings.model.insufficient_band)
    except (ValueError, KeyError, TypeError):  # the report must still render; the note says why the column is empty
        return None
    return opps["opportunity_id"].map(out.drop_duplicates("opportunity_id").set_index("opportunity_id")["adjusted_probability"])


def _opportunities(store: StateStore, settings: Settings, accounts: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    cols = ["opportunity_id", "account_id", "name", "stage", "amount", "probability", "close_date", "type", "forecast_category"]
    frame = replica_frame(store, OPEN_OPPORTUNITY_OBJECT, cols + ["is_closed"])
    out_cols = cols + ["crm", "adjusted_probability", "quarter"]
    if frame.empty:
        return pd.DataFrame(columns=out_cols), "none"
    closed = frame["is_closed"].map(lambda v: str(v).lower() in ("true", "1"))
    frame = frame[~closed.astype(bool)]
    frame = frame[frame["account_id"].isin(accounts["account_id"])].reset_index(drop=True)
    frame["amount"] = pd.to_numeric(frame["amount"], errors="coerce").astype("float64")
    frame["probability"] = pd.to_numeric(frame["probability"], errors="coerce").astype("float64")
    frame["close_date"] = pd.to_datetime(frame["close_date"], errors="coerce", utc=True, format="ISO8601").dt.tz_localize(None)
    frame["quarter"] = frame["close_date"].dt.to_period("Q").astype("string")
    source = "none"
    adjusted = _adjusted_from_pushed(store, settings, frame) if len(frame) else None
    if adjusted is not None:
        source = "crm write-back"
    elif len(frame):
        adjusted = _adjusted_from_engine(settings, frame, accounts)
        source = "engine" if adjusted is not None else "none"
    frame["adjusted_probability"] = adjusted.astype("float64") if adjusted is not None else np.nan
    return frame[out_cols], source


def task_subjects(store: StateStore) -> dict[tuple[str, str], str]:
    """(crm, task id) -> subject, for the tasks the CRM mirror holds with one (replica object `tasks`)."""
    frame = replica_frame(store, "tasks", ["task_id", "subject"])
    out: dict[tuple[str, str], str] = {}
    for crm, tid, subject in zip(frame["crm"], frame["task_id"], frame["subject"]):
        if tid and subject:
            out[(str(crm), str(tid).split(":", 1)[-1])] = str(subject)
    return out


def _tasks(store: StateStore, settings: Settings, accounts: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """Open playbook episodes with their CRM task, a readable subject and the SLA state at `now`."""
    eps = _read(store, "episodes", lambda t: t.c.status == "open")
    cols = ["episode_id", "crm", "account_id", "name", "playbook", "owner_email", "opened_at", "task_id", "subject",
            "task_due_at", "task_status", "sla_status", "hours_left"]
    if eps.empty:
        return pd.DataFrame(columns=cols)
    eps = eps[eps["account_id"].isin(accounts["account_id"])].copy()
    eps = eps.merge(accounts[["account_id", "name"]], on="account_id", how="left")
    eps["owner_email"] = eps["owner_email"].astype("string").fillna(NO_OWNER).astype(object)
    due = pd.to_datetime(eps["task_due_at"])
    hours_left = (due - naive_ts(now)).dt.total_seconds() / 3600
    window = (due - pd.to_datetime(eps["opened_at"])).dt.total_seconds() / 3600
    soon = (window * DUE_SOON_SHARE).clip(lower=DUE_SOON_MIN_HOURS).fillna(DUE_SOON_HOURS * DUE_SOON_SHARE)
    done = eps["task_status"].astype("string").str.lower().isin(["completed", "closed", "done"]).fillna(False).astype(bool)
    eps["sla_status"] = np.select(
        [done, due.isna(), hours_left < 0, hours_left <= soon],
        ["completed", "no due date", "breached", "due soon"],
        "on time",
    )
    eps["hours_left"] = hours_left
    titles = _playbook_titles(settings)
    known = task_subjects(store)
    eps["subject"] = [
        known.get((str(crm), str(tid))) or f"{titles.get(pb, str(pb).replace('_', ' ').capitalize())}: {name}"
        for crm, tid, pb, name in zip(eps["crm"], eps["task_id"], eps["playbook"], eps["name"])
    ]
    order = {"breached": 0, "due soon": 1, "on time": 2, "no due date": 3, "completed": 4}
    eps = eps.assign(_o=eps["sla_status"].map(order)).sort_values(["_o", "task_due_at", "episode_id"]).drop(columns="_o")
    return eps[cols].reset_index(drop=True)


def _playbook_titles(settings: Settings) -> dict[str, str]:
    """Playbook name -> its title (`At-risk intervention`), from the configured definitions."""
    try:
        from healthsync.playbooks.definitions import load_playbooks

        return {p.name: p.title for p in load_playbooks(settings).playbooks}
    except Exception:  # noqa: BLE001 - titles only make labels nicer; the name is the fallback
        return {}


def _escalations(store: StateStore, accounts: pd.DataFrame) -> pd.DataFrame:
    cols = ["episode_id", "account_id", "name", "playbook", "owner_email", "level", "kind", "recipient", "channel", "sent_at"]
    esc = _read(store, "escalations")
    if esc.empty:
        return pd.DataFrame(columns=cols)
    eps = _read(store, "episodes")[["episode_id", "account_id", "playbook", "owner_email"]]
    esc = esc.merge(eps, on="episode_id", how="left")
    esc = esc[esc["account_id"].isin(accounts["account_id"])]
    esc = esc.merge(accounts[["account_id", "name"]], on="account_id", how="left")
    esc["owner_email"] = esc["owner_email"].astype("string").fillna(NO_OWNER).astype(object)
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
    cols = ["crm", "object", "records", "last_modified", "cursor_value", "updated_at", "age_hours", "stale"]
    if frame.empty:
        return pd.DataFrame(columns=cols)
    frame["records"] = frame["records"].fillna(0).astype(int)
    last_pull = pd.to_datetime(frame["updated_at"]).fillna(pd.to_datetime(frame["last_modified"]))
    # never negative: `now` may be the sandbox clock while pulls are stamped with real time
    frame["age_hours"] = ((naive_ts(now) - last_pull).dt.total_seconds() / 3600).clip(lower=0)
    frame["stale"] = (frame["age_hours"] > STALE_AFTER_HOURS) | frame["age_hours"].isna()
    return frame.sort_values(["crm", "object"]).reset_index(drop=True)[cols]


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


def _data_quality(store: StateStore) -> dict[str, Any]:
    """The last run's data-quality KPIs per source, as `healthsync.sync.data_quality.latest` gives them:
    {"run_id", "measured_at", "sources": {source: {kpi: value | {subject: value}}}, "breached": [text]};
    {} in a build or a store without them."""
    try:
        from healthsync.sync.data_quality import latest
    except ImportError:
        return {}
    try:
        return latest(store) or {}
    except Exception:  # noqa: BLE001 - a store from before the data-quality revision: the section says so
        return {}


def _dimension_names(settings: Settings) -> list[str]:
    names: list[str] = []
    for m in settings.model.metrics:
        if m.dimension not in names:
            names.append(m.dimension)
    return names


def known_owners(accounts: pd.DataFrame, owners: dict[str, str]) -> list[str]:
    """Owner e-mails and names of the scored accounts (what `--owner` may name)."""
    emails = sorted({str(e) for e in accounts["owner_email"] if e and e != NO_OWNER})
    return emails + sorted({owners[e.lower()] for e in emails if e.lower() in owners})


def resolve_owner(accounts: pd.DataFrame, owners: dict[str, str], owner: str) -> str:
    """The owner e-mail `owner` names (an e-mail or a name, any case); NoMatchError with the nearest otherwise."""
    wanted = owner.strip().lower()
    emails = {str(e).lower(): str(e) for e in accounts["owner_email"] if e and e != NO_OWNER}
    if wanted in emails:
        return emails[wanted]
    by_name = [e for e in emails if owners.get(e, "").lower() == wanted]
    if len(by_name) == 1:
        return emails[by_name[0]]
    raise no_match("--owner", owner, "owner", known_owners(accounts, owners))


def resolve_account(accounts: pd.DataFrame, account: str) -> str:
    """The account id `account` names: a canonical id (`sf:001...`), the CRM's own id, or a unique name."""
    wanted = account.strip()
    ids = accounts["account_id"].astype(str)
    if (ids == wanted).any():
        return wanted
    raw = ids.str.split(":", n=1).str[-1]
    hit = ids[raw == wanted]
    if len(hit) == 1:
        return str(hit.iloc[0])
    named = ids[accounts["name"].astype(str).str.lower() == wanted.lower()]
    if len(named) == 1:
        return str(named.iloc[0])
    if len(named) > 1:
        raise NoMatchError(f"--account {account!r}: {len(named)} accounts have that name; give one id of: {', '.join(named.head(5))}")
    raise no_match("--account", account, "account", list(ids) + list(accounts["name"].astype(str)))


def _empty_accounts() -> pd.DataFrame:
    return pd.DataFrame(columns=["account_id", "crm", "name", "segment", "lifecycle", "arr", "renewal_date", "owner_email",
                                 "score", "band", "confidence", "drivers", "dimensions", "trend", "previous_score", "delta",
                                 "momentum", "delta_30d", "csm_sentiment", "customer_since", "renewal_factor"])


def load_report_data(store: StateStore, settings: Settings, now: datetime | None = None, owner: str | None = None,
                     account: str | None = None) -> ReportData:
    """Read the state store into the report's frames.

    `owner` (an e-mail or a name) limits everything to that owner's accounts, `account` (an id, the
    CRM's id or a unique name) to that one account; NoMatchError when no scored account matches.
    """
    now = _aware(now) or datetime.now(timezone.utc)
    run_id, run = _latest_run(store)
    history, scored_days = _history(store, now)
    owners = owner_names(store)
    notes: list[str] = []
    if run_id:
        accounts = _accounts(store, settings, run_id, history, now)
    else:
        accounts = _empty_accounts()
        notes.append("No scored run in the state store yet: run `healthsync run` first.")
    owner_email = None
    if owner:
        owner_email = resolve_owner(accounts, owners, owner)
        accounts = accounts[accounts["owner_email"].str.lower() == owner_email.lower()].reset_index(drop=True)
    focus = None
    if account:
        focus = resolve_account(accounts, account)
        accounts = accounts[accounts["account_id"] == focus].reset_index(drop=True)
    if owner or account:
        history = history[history["account_id"].isin(accounts["account_id"])].reset_index(drop=True)
    seen = set(history["band"].cat.categories.astype(str)) | set(accounts["band"].dropna().astype(str))
    bands = band_infos(settings, sorted(seen))
    accounts = priority_order(accounts, bands) if len(accounts) else accounts
    opps, source = _opportunities(store, settings, accounts) if run_id else (pd.DataFrame(columns=[
        "opportunity_id", "account_id", "name", "stage", "amount", "probability", "close_date", "type", "forecast_category",
        "crm", "adjusted_probability", "quarter"]), "none")
    if source == "none" and len(opps):
        notes.append("No health-adjusted probabilities yet (nothing written back and the engine's forecast is unavailable).")
    drift, drift_warnings = _drift(store, run_id, run.get("summary", {}))
    return ReportData(
        now=now,
        owner=owner_email,
        focus=focus,
        run=run,
        bands=bands,
        accounts=accounts,
        history=history,
        scored_days=scored_days,
        opportunities=opps,
        tasks=_tasks(store, settings, accounts, now),
        escalations=_escalations(store, accounts),
        freshness=_freshness(store, now),
        drift=drift,
        drift_warnings=drift_warnings,
        backtest=_backtest(store),
        owners=owners,
        instances=store.crm_instance_info(),
        adjusted_source=source,
        dimensions=_dimension_names(settings),
        data_quality=_data_quality(store),
        notes=notes,
    )
