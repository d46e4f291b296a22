"""The portfolio report: one self-contained HTML file from the state store.

Who reads it: executives (bands, ARR at risk, trend, forecast, model accuracy,
data freshness), CSMs (their book of business by priority, open playbook tasks
against their SLA, escalations) and anyone following a link into an account
(score history, dimensions, drivers, opportunities with base vs adjusted
probability). It must open from disk or as an e-mail attachment with no server
and no internet: charts are inline SVG (sync.report_charts), the CSS and the
few lines of script (tabs, a filter) are inline, and without script every
section is simply shown one after the other.

Numbers come from sync.report_data; this module only shapes them for the
template (`sync/templates/report.html.j2`, jinja2 with autoescape on, so CRM
text such as account names can never inject markup). Elements carrying the
figures a test or a script may want to read have `id`/`data-*` attributes
(`#band-table tr[data-band]`, `#kpi-arr-at-risk[data-value]`,
`#top-at-risk tr[data-account-id]`).

Size: for big portfolios the drill-down is limited to the accounts that matter
(`report_data.select_drill_down`, capped) and each owner's list in the
all-owners view to `BOOK_ROWS_PER_OWNER`; the report says so where it applies.
"""

from __future__ import annotations

import functools
import math
import os
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from healthsync.config.settings import Settings
from healthsync.connectors.base import ConfigurationError
from healthsync.sync import report_charts as charts
from healthsync.sync.report_data import (
    DRILL_DOWN_CAP,
    DUE_SOON_MIN_HOURS,
    DUE_SOON_SHARE,
    RENEWAL_HORIZON_DAYS,
    ReportData,
    backtest_metrics,
    load_report_data,
    priority_order,
)
from healthsync.sync.state import StateStore

TEMPLATE_DIR = Path(__file__).with_name("templates")
TEMPLATE = "report.html.j2"
#: Accounts listed per owner in the all-owners view (`--owner` lists the whole book).
BOOK_ROWS_PER_OWNER = 25
CRM_SHORT = {"salesforce": "SF", "hubspot": "HS"}
#: Renewals listed in the executive view.
RENEWAL_ROWS = 25


class ReportStateError(ConfigurationError):
    """The state store named by `state.url` holds no healthsync state (nothing to report on)."""


@dataclass
class ReportInfo:
    """What `write_report` wrote (the CLI and the run summary print these)."""

    path: Path
    size_bytes: int
    accounts: int
    charts: int

    def __str__(self) -> str:  # callers that print or store "the report" get its path
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)


# ----------------------------------------------------------------------------- formatting


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    try:
        return isinstance(v, float) and math.isnan(v)
    except TypeError:
        return False


def _num(v: Any) -> str:
    return "-" if _missing(v) else f"{v:,.0f}"


def _fixed2(v: Any) -> str:
    """Machine-readable amounts for data-* attributes: two decimals, empty when unknown."""
    return "" if _missing(v) else f"{float(v):.2f}"


def _money(v: Any) -> str:
    return "-" if _missing(v) else charts.money(float(v))


def _signed_money(v: Any) -> str:
    if _missing(v):
        return "-"
    return ("+" if v >= 0 else "-") + charts.money(abs(float(v)))


def _pct(v: Any) -> str:
    return "-" if _missing(v) else f"{float(v) * 100:.1f}%"


def _score(v: Any) -> str:
    return "-" if _missing(v) else f"{float(v):.1f}"


def _signed(v: Any) -> str:
    return "-" if _missing(v) else f"{float(v):+.1f}"


def _metric(v: Any) -> str:
    if _missing(v):
        return "-"
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    return f"{float(v):.3g}" if abs(float(v)) < 1000 else f"{float(v):,.0f}"


def _d(v: Any) -> str:
    if _missing(v):
        return "-"
    return pd.Timestamp(v).strftime("%Y-%m-%d") if isinstance(v, (datetime, date, pd.Timestamp, str)) else str(v)


def _dt(v: Any) -> str:
    if _missing(v):
        return "-"
    try:
        return pd.Timestamp(v).strftime("%Y-%m-%d %H:%M")
    except (ValueError, TypeError):
        return str(v)


def _hours(v: Any) -> str:
    if _missing(v):
        return "-"
    return f"{v:.1f} h" if abs(v) < 48 else f"{v / 24:.1f} d"


def _hours_left(v: Any) -> str:
    if _missing(v):
        return ""
    return f"in {_hours(v)}" if v >= 0 else f"{_hours(-v)} overdue"


@functools.lru_cache(maxsize=1)
def _environment() -> Environment:
    """One environment per process: jinja2 caches the compiled template in it (the scheduler reports every run)."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=_num, fixed2=_fixed2, money=_money, signed_money=_signed_money, pct=_pct, score=_score, signed=_signed,
        metric=_metric, d=_d, dt=_dt, hours=_hours, hours_left=_hours_left,
    )
    return env


_ANCHOR_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def anchor(prefix: str, key: str) -> str:
    """An HTML id for a record id, unique per id (unsafe characters are hex-escaped, not dropped)."""
    return prefix + _ANCHOR_UNSAFE.sub(lambda m: f"_{ord(m.group()):x}_", str(key))


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts; missing non-float values become None (pd.NA/NaT have no truth value in a template).

    Float columns keep NaN (the number filters print "-"): converting them costs
    more than everything else for a 10,000-account book.
    """
    if frame.empty:
        return []
    out = frame.copy(deep=False)
    for name in out.columns:
        col = out[name]
        if col.dtype == "float64":
            continue
        # object arrays, because iterating pandas' Arrow-backed strings row by row is slow
        values = col.to_numpy(dtype=object, copy=True)
        missing = col.isna().to_numpy()
        if missing.any():
            values[missing] = None
        out[name] = pd.Series(values, index=col.index, dtype=object)
    return out.to_dict("records")


# ----------------------------------------------------------------------------- shaping


def _trend_label(momentum: Any, delta_30d: Any, delta: Any) -> str:
    if not _missing(delta_30d):
        return f"{momentum or ''} {float(delta_30d):+.1f} (30d)".strip()
    if not _missing(delta):
        return f"{momentum or ''} {float(delta):+.1f} (last run)".strip()
    return "new"


def _account_rows(frame: pd.DataFrame | list[dict], colors: dict[str, str], drill_ids: set[str]) -> list[dict]:
    rows = _records(frame) if isinstance(frame, pd.DataFrame) else frame
    for r in rows:
        r["color"] = colors.get(r.get("band"), "#9aa0a6")
        r["anchor"] = anchor("acct-", r["account_id"])
        r["crm_short"] = CRM_SHORT.get(r.get("crm"), r.get("crm") or "")  # same names exist in both CRMs
        r["drill"] = r["account_id"] in drill_ids
        r["trend_label"] = _trend_label(r.get("momentum"), r.get("delta_30d"), r.get("delta"))
        change = r.get("delta_30d")
        r["change"] = r.get("delta") if _missing(change) else change
    return rows


def _owner_sections(data: ReportData, colors: dict[str, str], drill_ids: set[str]) -> tuple[list[dict], int | None]:
    cap = None if data.owner else BOOK_ROWS_PER_OWNER
    ordered = priority_order(data.accounts, data.bands)
    risky = {b.name for b in data.bands if b.at_risk}
    tasks_by_owner = {k: _records(v) for k, v in data.tasks.groupby("owner_email", sort=False)} if len(data.tasks) else {}
    esc_by_owner = {k: _records(v) for k, v in data.escalations.groupby("owner_email", sort=False)} if len(data.escalations) else {}
    totals = ordered.assign(_risky=ordered["band"].isin(risky)).groupby("owner_email", sort=False).agg(
        accounts=("account_id", "size"), arr=("arr", "sum"), at_risk=("_risky", "sum"))
    shown = ordered if cap is None else ordered.groupby("owner_email", sort=False).head(cap)
    rows_by_owner: dict[str, list[dict]] = {}
    for r in _account_rows(shown, colors, drill_ids):  # one conversion for every owner (not one per owner)
        rows_by_owner.setdefault(r["owner_email"], []).append(r)
    sections = []
    for owner, t in totals.iterrows():
        tasks = tasks_by_owner.get(owner, [])
        rows = rows_by_owner.get(owner, [])
        sections.append(
            {
                "owner": owner,
                "anchor": anchor("owner-", owner),
                "accounts": int(t["accounts"]),
                "arr": float(t["arr"]),
                "at_risk": int(t["at_risk"]),
                "open_tasks": sum(1 for t in tasks if t["sla_status"] != "completed"),
                "breached": sum(1 for t in tasks if t["sla_status"] == "breached"),
                "rows": rows,
                "more": int(t["accounts"]) - len(rows),
                "tasks": tasks,
                "escalations": esc_by_owner.get(owner, []),
            }
        )
    sections.sort(key=lambda s: (-s["breached"], -s["at_risk"], str(s["owner"])))
    return sections, cap


#: Keys the score history may carry next to the dimension scores (the engine's override columns).
OVERRIDE_KEYS = ("override", "override_reason", "raw_band")


def _override_text(recorded: dict, sentiment: Any) -> str:
    """The CSM override as recorded with the score when it is, else the sentiment that feeds it."""
    if recorded.get("override"):
        reason = recorded.get("override_reason") or "CSM sentiment"
        before = f" (computed band {recorded['raw_band']})" if recorded.get("raw_band") else ""
        return f"{reason}{before}"
    if "override" in recorded:
        return "none"
    return f"sentiment {sentiment}; moves the band at most one tier" if sentiment else "no CSM sentiment"


def _drill_rows(data: ReportData, colors: dict[str, str], drill_ids: set[str], band_ranges: list[tuple]) -> list[dict]:
    drill = data.drill_down
    if drill.empty:
        return []
    rows = _account_rows(drill, colors, drill_ids)
    history = data.history[data.history["account_id"].isin(drill_ids)].sort_values(["scored_at", "run_id"])
    series = {k: v["score"].to_numpy(dtype=float) for k, v in history.groupby("account_id", sort=False)}
    opps = data.opportunities[data.opportunities["account_id"].isin(drill_ids)].sort_values(["close_date", "opportunity_id"])
    opps_by_account: dict[str, list[dict]] = {}
    for op in _records(opps):
        opps_by_account.setdefault(op["account_id"], []).append(op)
    spark = charts.SparklineRenderer(band_ranges)
    for i, r in enumerate(rows, start=1):
        scores = series.get(r["account_id"])
        if scores is None or not len(scores):
            scores = np.array([r["score"] if not _missing(r["score"]) else np.nan])
        r["spark"] = spark.render(scores, f"h{i}")
        r["history_runs"] = int(len(scores))
        r["history_min"] = float(np.nanmin(scores)) if np.isfinite(scores).any() else None
        r["history_max"] = float(np.nanmax(scores)) if np.isfinite(scores).any() else None
        dims = dict(r.get("dimensions") or {})
        recorded = {k: dims.pop(k) for k in OVERRIDE_KEYS if k in dims}
        r["dimensions"] = [(k, v) for k, v in dims.items() if not isinstance(v, (str, bool, dict, list))]
        r["override"] = _override_text(recorded, r.get("csm_sentiment"))
        r["opps"] = opps_by_account.get(r["account_id"], [])
        r["search"] = " ".join(str(r.get(k) or "") for k in ("name", "owner_email", "band", "account_id")).lower()
    return rows


def render_report(data: ReportData, settings: Settings) -> tuple[str, int]:
    """The report's HTML and how many charts it holds."""
    colors = {b.name: b.color for b in data.bands}
    drill_ids = set(data.drill_down["account_id"]) if len(data.drill_down) else set()
    configured = [(b.name, b.min, b.max, b.color) for b in settings.model.bands]
    rendered = {
        "bands": charts.bands_chart(data.band_summary),
        "distribution": charts.distribution_chart(data.accounts["score"], data.accounts["band"], [(b.name, b.color) for b in data.bands]),
        "trend": charts.trend_chart(data.trend, [(b.name, b.color) for b in data.bands]),
        "forecast": charts.forecast_chart(data.forecast),
    }
    drill_rows = _drill_rows(data, colors, drill_ids, configured)
    owners, book_cap = _owner_sections(data, colors, drill_ids)

    total_arr = float(data.accounts["arr"].sum()) if len(data.accounts) else 0.0
    forecast_rows = _records(data.forecast)
    for q in forecast_rows:
        q["change"] = None if _missing(q["adjusted_expected"]) else q["adjusted_expected"] - q["base_expected"]
    freshness_rows = _records(data.freshness)
    for f in freshness_rows:
        f["last_pull"] = f.get("updated_at") or f.get("last_modified")
    renewals = data.renewals_at_risk
    backtest = None
    if data.backtest:
        backtest = {"created_at": data.backtest.get("created_at"), "metrics": backtest_metrics(data.backtest["report"])}
    drift_rows = _records(data.drift)
    context = {
        "title": "Customer health report" + (f" - {data.owner}" if data.owner else ""),
        "version": _version(),
        "now": data.now,
        "owner": data.owner,
        "run": {"run_id": data.run.get("run_id"), "scored_at": data.run.get("scored_at"), "mode": data.run.get("mode"),
                "status": data.run.get("status")},
        "notes": data.notes,
        "kpi": {
            "accounts": len(data.accounts),
            "arr": total_arr,
            "arr_at_risk": data.arr_at_risk,
            "arr_at_risk_share": data.arr_at_risk / total_arr if total_arr else 0.0,
            "mean_score": float(data.accounts["score"].mean()) if len(data.accounts) else None,
            "improving": data.improving,
            "declining": data.declining,
        },
        "at_risk_names": ", ".join(b.name for b in data.bands if b.at_risk) or "no band flagged at risk",
        "band_rows": _records(data.band_summary),
        "charts": rendered,
        "trend_runs": len(data.trend),
        "top_rows": _account_rows(data.top_at_risk, colors, drill_ids),
        "renewal_rows": _account_rows(renewals.head(RENEWAL_ROWS), colors, drill_ids),
        "renewal_more": max(len(renewals) - RENEWAL_ROWS, 0),
        "renewal_days": RENEWAL_HORIZON_DAYS,
        "forecast_rows": forecast_rows,
        "adjusted_source": data.adjusted_source,
        "backtest": backtest,
        "freshness_rows": freshness_rows,
        "drift_rows": drift_rows,
        "drift_flagged": any(d.get("warning") for d in drift_rows),
        "drift_warnings": data.drift_warnings,
        "data_quality": data.data_quality,
        "owners": owners,
        "book_cap": book_cap,
        "due_soon": f"in the last {DUE_SOON_SHARE:.0%} of the task's SLA window (at least the last {DUE_SOON_MIN_HOURS} h)",
        "drill_rows": drill_rows,
        "drill_total": data.drill_down_total,
    }
    html = _environment().get_template(TEMPLATE).render(**context)
    return html, len(rendered) + len(drill_rows)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("healthsync")
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        return "dev"


def redact_url(url: str) -> str:
    """The state URL without its password (PostgreSQL URLs may carry one)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as its scheme only
        return url.split(":", 1)[0] + ":..."


def write_report(store: StateStore, settings: Settings, path: str | Path, owner: str | None = None, *,
                 now: datetime | None = None, drill_down_cap: int = DRILL_DOWN_CAP) -> ReportInfo:
    """Render the report from the state store to `path` (written atomically; parent directories created).

    `owner` (an e-mail) limits the report to that owner's accounts; `now` is the
    clock the SLA states are computed against (the sandbox clock in sandbox mode,
    real UTC time by default).
    """
    try:
        version = store.version()
    except SQLAlchemyError:
        version = None
    if not version:
        raise ReportStateError(f"state.url: no healthsync state at {redact_url(store.url)}; run `healthsync run` first")
    data = load_report_data(store, settings, now=now, owner=owner, drill_down_cap=drill_down_cap)
    html, n_charts = render_report(data, settings)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = html.encode("utf-8")
    # a sibling temp file with the usual permissions (mkstemp's 0600 would stop the team reading a shared report)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(payload)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ReportInfo(path=target, size_bytes=len(payload), accounts=len(data.accounts), charts=n_charts)
