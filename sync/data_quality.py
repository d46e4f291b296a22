"""Data-quality KPIs per source, recorded every run, with ops alerts on changes of state.

Seed 000_caaf87bd3b38802c.txt ("Data architecture, data quality, and governance") names the
KPIs and SLAs: completeness (95% data completeness), error rate (< 5%), timeliness
(freshness SLAs), uniqueness (no duplicates); seed 003_cec208348d92c0f6.txt's maintenance
schedule flags "Any source >24h stale", and warns that a silently broken integration makes
every account look at risk. Per source (`salesforce`, `hubspot`, `warehouse`):

    completeness      metric input -> share of the source's accounts with a value
                      (warehouse: share of all scored accounts, for the inputs it provides)
    freshness_hours   CRMs: hours since the oldest last successful pull of its objects
                      (per object in freshness_hours_by_object); warehouse: age of the newest
                      event in the window (null: no event in the window, or unreachable)
    error_rate        CRMs: records with problems / records pulled this run;
                      warehouse: rows without an account key / rows in the window
                      (judged against its threshold only over `error_rate_min_rows` rows or more)
    duplicate_ids     CRMs: per object, records whose id is not unique in the replica;
                      warehouse: account keys claimed by more than one account of one CRM
    key_match_rate    warehouse: distinct keys with usage matched to a CRM account / all keys
                      (and accounts_without_usage: CRM accounts that got no usage row)

`healthsync run --json` carries them as `data_quality`; each run's values go to the
`data_quality` table (shown by `healthsync status` and the report). Every KPI is compared
with its threshold (`data_quality` config); the current state of each KPI lives in
`data_quality_state`, and only a change of state (a KPI starts or stops breaching) is posted
to `escalation.ops_channel`, one message per run for all changes: the pattern of the
scheduler's ops reports (sync/scheduler.py), with its message format (`ops_message`). A post
that fails is retried at the next run (the state stays unannounced). Its idempotency key is
deterministic (channel, UTC day, the changes): a lost answer is found in the channel's history
instead of posting twice, and so is the alert a lost or moved state database already sent that
day, and the alert a run killed between posting and recording had sent (history is read only when
a KPI has no earlier state, or its last announcement was never recorded).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from sqlalchemy import insert, select, update

from healthsync.config.settings import Settings
from healthsync.engine.rules import rule_columns
from healthsync.engine.usage import USAGE_COLUMNS
from healthsync.sync.state import StateStore, data_quality, data_quality_state, utc_aware, utc_naive

log = logging.getLogger(__name__)

CRM_OBJECTS = ("accounts", "opportunities", "tickets")
ID_COLUMNS = {"accounts": "account_id", "opportunities": "opportunity_id", "tickets": "ticket_id"}


@dataclass
class Kpi:
    """One KPI of one source against its threshold."""

    source: str
    kpi: str
    subject: str
    value: float | None
    threshold: float
    breached: bool
    #: the channel may already hold this alert: no earlier state (a first run, a state database lost or
    #: moved), or an earlier announcement that never got recorded (a failed post, or a process killed
    #: between posting and recording), so the channel's history is checked before posting
    doubtful: bool = False

    def describe(self) -> str:
        what = f"{self.source} {self.kpi}" + (f" ({self.subject})" if self.subject else "")
        value = "none" if self.value is None else (f"{self.value:.1%}" if self.kpi in ("completeness", "error_rate", "key_match_rate")
                                                   else f"{self.value:g}")
        limit = f"{self.threshold:.0%}" if self.kpi in ("completeness", "error_rate", "key_match_rate") else f"{self.threshold:g}"
        side = {"completeness": "min", "key_match_rate": "min"}.get(self.kpi, "max")
        return f"{what}: {value} ({side} {limit})"


def _share(values: pd.Series) -> float:
    return float(values.notna().mean()) if len(values) else 1.0


def metric_inputs(settings: Settings) -> list[str]:
    seen: list[str] = []
    for metric in settings.model.metrics:
        for column in rule_columns(metric.rule):
            if column not in seen:
                seen.append(column)
    return seen


def _freshness(store: StateStore, crm: str, now: datetime) -> tuple[float | None, dict[str, float]]:
    cursors = store.tables["cursors"]
    with store.engine.connect() as conn:
        rows = conn.execute(select(cursors.c.object, cursors.c.updated_at).where(cursors.c.crm == crm)).all()
    by_object = {}
    for obj, updated in rows:
        if obj in CRM_OBJECTS and updated is not None:
            by_object[obj] = round(max(0.0, (now - utc_aware(updated)).total_seconds() / 3600.0), 3)
    return (max(by_object.values()) if by_object else None), by_object


def _duplicates(frame: pd.DataFrame, column: str) -> int:
    if column not in frame.columns or frame.empty:
        return 0
    ids = frame[column].dropna()
    return int(ids.duplicated(keep=False).sum())


def measure(store: StateStore, settings: Settings, crms: list[str], scored, pull_stats, usage, now: datetime) -> dict:
    """The `data_quality` object of `healthsync run --json` (see the module docstring)."""
    inputs = metric_inputs(settings)
    features = scored.features if scored is not None and scored.features is not None else pd.DataFrame()
    crm_of = scored.scores["crm"].to_numpy() if scored is not None and "crm" in scored.scores.columns else None
    warehouse_columns: set[str] = set()
    if usage is not None and usage.usage is not None:
        warehouse_columns = {c for c in usage.usage.columns if c in USAGE_COLUMNS}
        warehouse_columns |= {c for c in ("decay_engagement_index", "mta_engagement_index") if c in features.columns}
    out: dict[str, dict] = {}
    for crm in crms:
        rows = (crm_of == crm) if crm_of is not None and len(crm_of) == len(features) else np.zeros(len(features), bool)
        part = features.loc[rows] if len(features) else features
        completeness = {c: round(_share(part[c]), 4) for c in inputs if c in part.columns and c not in warehouse_columns}
        freshness, by_object = _freshness(store, crm, now)
        pulled = [s for s in (pull_stats or []) if s.crm == crm]
        records = sum(s.records for s in pulled)
        problems = sum(len(s.problems) for s in pulled)
        duplicates = {}
        for obj in CRM_OBJECTS:
            frame = scored.inputs.get(obj) if scored is not None else None
            if frame is not None and "crm" in frame.columns:
                duplicates[obj] = _duplicates(frame.loc[frame["crm"] == crm], ID_COLUMNS[obj])
        out[crm] = {
            "completeness": completeness,
            "freshness_hours": freshness,
            "freshness_hours_by_object": by_object,
            "error_rate": round(problems / records, 4) if records else None,
            "records_pulled": records,
            "duplicate_ids": duplicates,
        }
    if usage is not None:
        wh: dict = {"unreachable": usage.unreachable}
        if usage.pull is not None:
            pull = usage.pull
            wh["completeness"] = {c: round(_share(features[c]), 4) for c in inputs
                                  if c in warehouse_columns and c in features.columns}
            wh["freshness_hours"] = None if pull.freshness_hours is None else round(pull.freshness_hours, 3)
            wh["error_rate"] = round(pull.rows_without_key / pull.rows_in_window, 4) if pull.rows_in_window else None
            wh["rows_in_window"] = pull.rows_in_window
            wh["records_pulled"] = pull.rows_in_window
            wh["touchpoints_in_window"] = pull.touchpoints_in_window
            wh["query_seconds"] = round(pull.seconds, 3)
        else:
            wh.update({"completeness": {}, "freshness_hours": None, "error_rate": None})
        match = usage.match
        wh["duplicate_ids"] = {"account_keys": match.shared_keys if match else 0}
        wh["key_match_rate"] = None if match is None or match.key_match_rate is None else round(match.key_match_rate, 4)
        wh["keys"] = match.keys if match else 0
        wh["accounts_without_usage"] = match.accounts_without_usage if match else None
        out["warehouse"] = wh
    return out


def evaluate(report: dict, settings: Settings) -> list[Kpi]:
    """Every KPI against its threshold (config `data_quality`)."""
    cfg = settings.data_quality
    kpis: list[Kpi] = []
    for source, values in report.items():
        for column, share in (values.get("completeness") or {}).items():
            minimum = cfg.completeness_min_by_input.get(column, cfg.completeness_min)
            kpis.append(Kpi(source, "completeness", column, share, minimum, share < minimum))
        limit = cfg.freshness_hours_max_by_source.get(source, cfg.freshness_hours_max)
        fresh = values.get("freshness_hours")
        if source == "warehouse" or fresh is not None:
            # a warehouse with no event in its window (or unreachable) is as stale as it gets
            kpis.append(Kpi(source, "freshness_hours", "", fresh, limit, fresh is None or fresh > limit))
        rate = values.get("error_rate")
        if rate is not None and (values.get("records_pulled") or 0) >= cfg.error_rate_min_rows:
            kpis.append(Kpi(source, "error_rate", "", rate, cfg.error_rate_max, rate > cfg.error_rate_max))
        for obj, count in (values.get("duplicate_ids") or {}).items():
            kpis.append(Kpi(source, "duplicate_ids", obj, float(count), float(cfg.duplicate_ids_max), count > cfg.duplicate_ids_max))
        match = values.get("key_match_rate")
        if match is not None:
            kpis.append(Kpi(source, "key_match_rate", "", match, cfg.key_match_rate_min, match < cfg.key_match_rate_min))
    return kpis


def record(store: StateStore, run_id: str, kpis: list[Kpi], now: datetime) -> list[Kpi]:
    """Store this run's KPIs and their states; returns the KPIs whose state the ops channel has not been told."""
    at = utc_naive(now)
    pending: list[Kpi] = []
    with store.begin() as conn:
        if kpis:
            conn.execute(insert(data_quality), [
                {"run_id": run_id, "measured_at": at, "source": k.source, "kpi": k.kpi, "subject": k.subject,
                 "value": k.value, "threshold": k.threshold, "breached": k.breached} for k in kpis
            ])
        states = {(r.source, r.kpi, r.subject): r for r in conn.execute(select(data_quality_state))}
        for k in kpis:
            key = (k.source, k.kpi, k.subject)
            before = states.get(key)
            if before is None:
                # a new KPI: a breach is news, a healthy value is not
                conn.execute(insert(data_quality_state).values(source=k.source, kpi=k.kpi, subject=k.subject,
                                                               breached=k.breached, since=at, announced=not k.breached))
                if k.breached:
                    k.doubtful = True
                    pending.append(k)
                continue
            if bool(before.breached) != k.breached:
                conn.execute(update(data_quality_state).where(*_match(key)).values(breached=k.breached, since=at, announced=False))
                pending.append(k)
            elif not before.announced:
                k.doubtful = True  # the last announcement failed, or was cut short after posting: say it now
                pending.append(k)
    return pending


def _match(key: tuple[str, str, str]):
    return (data_quality_state.c.source == key[0], data_quality_state.c.kpi == key[1], data_quality_state.c.subject == key[2])


def announce(store: StateStore, slack, channel: str | None, pending: list[Kpi], now: datetime) -> int:
    """One ops-channel message for the changes of state; returns messages posted (0 or 1)."""
    if not pending:
        return 0
    from healthsync.sync.slack_messages import ops_message

    breached = [k for k in pending if k.breached]
    recovered = [k for k in pending if not k.breached]
    lines = [f"below threshold: {k.describe()}" for k in breached] + [f"back within threshold: {k.describe()}" for k in recovered]
    if slack is None or not channel:
        log.warning("data quality changed (%s); no Slack ops channel configured", "; ".join(lines))
        _mark_announced(store, pending)
        return 0
    outcome = "below threshold" if breached else "back within thresholds"
    text, blocks = ops_message("data quality", outcome, "\n".join(lines), now, ok=not breached)
    # the same changes on the same UTC day have the same key, whoever computes it
    day = now.astimezone(timezone.utc).strftime("%Y-%m-%d")
    changes = "|".join(sorted(f"{k.source}/{k.kpi}/{k.subject}/{k.breached}" for k in pending))
    key = "dq-" + hashlib.sha256(f"{channel}|{day}|{changes}".encode()).hexdigest()[:32]
    if any(k.doubtful for k in pending) and _already_posted(slack, channel, key, now):
        _mark_announced(store, pending)  # already in the channel (a lost state, or a run killed after posting)
        return 0
    try:
        slack.post(channel=channel, text=text, blocks=blocks, idempotency_key=key)
    except Exception as exc:  # noqa: BLE001 - an alert that fails is retried next run; the sync stands
        log.warning("data-quality alert to %s failed (retried next run): %s", channel, exc)
        return 0
    _mark_announced(store, pending)
    return 1


def _already_posted(slack, channel: str, key: str, now: datetime) -> bool:
    """Whether today's alert with this key is in the channel (one history read, only when the state is new)."""
    start = now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        return slack.find_posted(channel, key, start.timestamp()) is not None
    except Exception as exc:  # noqa: BLE001 - unreadable history: post (an ops alert twice beats none)
        log.info("data-quality alert: could not check %s for an earlier post (%s)", channel, exc)
        return False


def _mark_announced(store: StateStore, kpis: list[Kpi]) -> None:
    with store.begin() as conn:
        for k in kpis:
            conn.execute(update(data_quality_state).where(*_match((k.source, k.kpi, k.subject))).values(announced=True))


def latest(store: StateStore) -> dict:
    """The last run's KPIs per source (for `healthsync status` and the report); {} before any run."""
    with store.engine.connect() as conn:
        last = conn.execute(select(data_quality.c.run_id, data_quality.c.measured_at)
                            .order_by(data_quality.c.measured_at.desc()).limit(1)).first()
        if last is None:
            return {}
        rows = conn.execute(select(data_quality).where(data_quality.c.run_id == last.run_id)).mappings().all()
    out: dict = {"run_id": last.run_id, "measured_at": utc_aware(last.measured_at).isoformat(), "sources": {}, "breached": []}
    for r in rows:
        source = out["sources"].setdefault(r["source"], {})
        value = r["value"]
        if r["kpi"] in ("completeness", "duplicate_ids"):
            source.setdefault(r["kpi"], {})[r["subject"]] = value
        else:
            source[r["kpi"]] = value
        if r["breached"]:
            out["breached"].append(Kpi(r["source"], r["kpi"], r["subject"], value, r["threshold"], True).describe())
    return out
