"""The portfolio report as one self-contained HTML file: what `write_report` writes.

The page is static HTML (header, filter bar, one section per view, the model
and data-quality tables) plus three inline scripts: the report's data
(payload.py, compressed), the charting library (charts.javascript_bundle) and
the page's own script (assets/report.js), which builds every table and chart
from the data and redraws them when a filter changes. Nothing is fetched: the
file opens from disk or as an e-mail attachment with no network.

jinja2 renders with autoescape on, so CRM text (account names) can never inject
markup; the data travels base64-encoded and is put into the DOM as text by the
script, never as HTML.
"""

from __future__ import annotations

import functools
import json
import math
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from healthsync.config.settings import Settings
from healthsync.connectors.base import ConfigurationError
from healthsync.sync.report import charts
from healthsync.sync.report.data import ReportData, backtest_metrics, load_report_data
from healthsync.sync.report.payload import CRM_LABELS, build_payload, encode
from healthsync.sync.state import StateStore
from healthsync.sync.version import installed_version

HERE = Path(__file__).parent
TEMPLATE_DIR = HERE / "templates"
ASSET_DIR = HERE / "assets"
TEMPLATE = "report.html.j2"


class ReportStateError(ConfigurationError):
    """The state store named by `state.url` holds no healthsync state (nothing to report on)."""


@dataclass
class ReportInfo:
    """What a report writer wrote (the CLI and the run summary print these)."""

    path: Path
    size_bytes: int
    accounts: int
    charts: int

    def __str__(self) -> str:  # callers that print or store "the report" get its path
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)


# ----------------------------------------------------------------------------- formatting (static sections)


def missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    try:
        return isinstance(v, float) and math.isnan(v)
    except TypeError:
        return False


def money(value: Any) -> str:
    """$1.2M / $350K / $900, the way revenue people read it."""
    if missing(value):
        return "-"
    v = float(value)
    sign = "-" if v < 0 else ""
    v = abs(v)
    for div, unit in ((1e9, "B"), (1e6, "M")):
        if v >= div:
            return f"{sign}${v / div:.1f}{unit}"
    if v >= 1e3:
        return f"{sign}${v / 1e3:.0f}K"
    return f"{sign}${v:.0f}"


def _num(v: Any) -> str:
    return "-" if missing(v) else f"{v:,.0f}"


def _pct(v: Any) -> str:
    return "-" if missing(v) else f"{float(v) * 100:.1f}%"


def _metric(v: Any) -> str:
    if missing(v):
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return f"{float(v):.3g}" if abs(float(v)) < 1000 else f"{float(v):,.0f}"


def _dt(v: Any) -> str:
    if missing(v):
        return "-"
    try:
        return pd.Timestamp(v).strftime("%Y-%m-%d %H:%M")
    except (ValueError, TypeError):
        return str(v)


def _hours(v: Any) -> str:
    if missing(v):
        return "-"
    return f"{v:.1f} h" if abs(v) < 48 else f"{v / 24:.1f} d"


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    """One environment per process: jinja2 caches the compiled templates in it (the scheduler reports every run)."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_num, money=money, pct=_pct, metric=_metric, dt=_dt, hours=_hours)
    return env


@functools.lru_cache(maxsize=4)
def asset(name: str) -> str:
    return (ASSET_DIR / name).read_text(encoding="utf-8")


def version() -> str:
    return installed_version("dev")  # "dev": running from a source tree without metadata


def redact_url(url: str) -> str:
    """The state URL without its password (PostgreSQL URLs may carry one)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as its scheme only
        return url.split(":", 1)[0] + ":..."


def _records(frame: pd.DataFrame) -> list[dict]:
    if frame.empty:
        return []
    out = frame.astype(object).where(frame.notna(), None)
    return out.to_dict("records")


def _quality_rows(data_quality: dict[str, Any]) -> list[dict]:
    """One row per source of the data-quality KPIs (sync/data_quality.py shape), for the static table."""
    rows = []
    for source, kpis in sorted((data_quality.get("sources") or {}).items()):
        completeness = kpis.get("completeness") or {}
        duplicates = kpis.get("duplicate_ids") or {}
        lowest = min(((v, k) for k, v in completeness.items() if v is not None), default=(None, None))
        rows.append({
            "source": source,
            "completeness": lowest[0],
            "completeness_of": lowest[1],
            "freshness_hours": kpis.get("freshness_hours"),
            "error_rate": kpis.get("error_rate"),
            "duplicate_ids": sum(int(v or 0) for v in duplicates.values()),
            "key_match_rate": kpis.get("key_match_rate"),
        })
    return rows


def render_report(data: ReportData, settings: Settings) -> tuple[str, int]:
    """The report's HTML and how many charts it can draw."""
    title = "Customer health report" + (f" - {data.owners.get(data.owner.lower(), data.owner)}" if data.owner else "")
    if data.focus is not None and len(data.accounts):
        title = f"Customer health report - {data.accounts['name'].iloc[0]}"
    bands = [(b.name, b.color) for b in data.bands]
    specs = charts.compiled_specs(bands)
    payload = build_payload(data, title=title, version=version(), stable_within=settings.model.trend_stable_within,
                            lifecycle_order=[s.name for s in settings.model.lifecycle.stages] + ["renewal window"])
    backtest = None
    if data.backtest:
        backtest = {"created_at": data.backtest.get("created_at"), "metrics": backtest_metrics(data.backtest["report"])}
    drift_rows = _records(data.drift)
    context = {
        "title": title,
        "version": payload["meta"]["version"],
        "generated": payload["meta"]["generated"],
        "run": {"run_id": data.run.get("run_id"), "mode": data.run.get("mode")},
        "owner": data.owner,
        "notes": data.notes,
        "backtest": backtest,
        "quality_rows": _quality_rows(data.data_quality),
        "quality": data.data_quality,
        "freshness_rows": _records(data.freshness),
        "crm_labels": CRM_LABELS,
        "drift_rows": drift_rows,
        "drift_flagged": any(d.get("warning") for d in drift_rows),
        "drift_warnings": data.drift_warnings,
        "css": asset("report.css"),
        "specs_json": charts.script_safe(json.dumps(specs, separators=(",", ":"))),
        "payload": encode(payload),
        "vega_js": charts.javascript_bundle(),
        "app_js": charts.script_safe(asset("report.js")),
    }
    html = environment().get_template(TEMPLATE).render(**context)
    return html, len(specs)


def write_atomically(target: Path, html: str) -> int:
    """Write `html` to `target` through a sibling temp file (parents created); returns the bytes written."""
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
    return len(payload)


def require_state(store: StateStore) -> None:
    try:
        found = store.version()
    except SQLAlchemyError:
        found = None
    if not found:
        raise ReportStateError(f"state.url: no healthsync state at {redact_url(store.url)}; run `healthsync run` first")


def write_report(store: StateStore, settings: Settings, path: str | Path, owner: str | None = None, *,
                 account: str | None = None, now: datetime | None = None) -> ReportInfo:
    """Render the portfolio report from the state store to `path` (written atomically; parent directories created).

    `owner` (an e-mail or a name) limits the report to that owner's accounts, `account` to one account
    (opened on its page); NoMatchError, a ConfigurationError, when nothing matches. `now` is the clock
    SLA states and renewal windows are computed against (the sandbox clock in sandbox mode, real UTC
    time by default).
    """
    require_state(store)
    data = load_report_data(store, settings, now=now, owner=owner, account=account)
    html, n_charts = render_report(data, settings)
    size = write_atomically(Path(path), html)
    return ReportInfo(path=Path(path), size_bytes=size, accounts=len(data.accounts), charts=n_charts)
