"""The customer-facing QBR page: one account's adoption, usage, support and value, to share with the customer.

`healthsync report --account ID --customer --out F.html` (seed 001_9b7515619717186a.txt,
"Customer-Facing Health Reports"). What it shows, all from the customer's own
product and support data:

- adoption: active users vs seats purchased, features in use of those available,
  logins per user per week;
- usage trends: those figures over time (usage_history, one point per day a run
  recorded them), with the change since the first point of the period;
- support: requests opened and resolved in the last 90 days, the median time to
  resolve, requests open now, and requests per month;
- value delivered and next steps, as plain positive sentences.

What it never shows (seed 001, "What to Exclude"): the score, the band or any
grade, risk or churn language, the drivers, the scoring method, CSM sentiment.
This module reads none of them: it does not touch score_history. The page has
no script; its charts are inline SVG and it prints to one PDF page.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
from sqlalchemy import select

from healthsync.config.settings import Settings
from healthsync.sync.report import charts
from healthsync.sync.report.data import (
    ACCOUNT_OBJECT,
    NoMatchError,
    no_match,
    naive_ts,
    owner_names,
    replica_frame,
)
from healthsync.sync.report.render import ReportInfo, environment, require_state, version, write_atomically
from healthsync.sync.state import StateStore

TEMPLATE = "customer.html.j2"
#: the support summary's window (a quarter, as a QBR looks back)
SUPPORT_DAYS = 90
#: usage trends look back this far
USAGE_DAYS = 365
#: months of support requests charted
SUPPORT_MONTHS = 6
ACCOUNT_COLUMNS = ["account_id", "name", "segment", "arr", "seats_purchased", "active_users_30d", "logins_per_user_week",
                   "features_used", "features_available", "customer_since", "owner_email"]
ACCENT = "#2f6fd6"
SOFT = "#9aa7b8"


@dataclass
class CustomerData:
    """What the customer page shows for one account (nothing internal: see the module docstring)."""

    now: datetime
    account: dict[str, Any]
    csm_name: str | None
    csm_email: str | None
    usage: pd.DataFrame  # day, active_users, seats_purchased, logins_per_user_week, features_used, features_available
    tickets: pd.DataFrame  # created_at, closed_at, status, priority
    notes: list[str] = field(default_factory=list)


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def resolve_customer_account(store: StateStore, account: str) -> tuple[str, dict[str, Any]]:
    """The live account `account` names (canonical id, the CRM's own id, or a unique name) and its record."""
    frame = replica_frame(store, ACCOUNT_OBJECT, ACCOUNT_COLUMNS)
    frame = frame.dropna(subset=["account_id"]).drop_duplicates("account_id", keep="last")
    wanted = account.strip()
    ids = frame["account_id"].astype(str)
    hit = frame[ids == wanted]
    if hit.empty:
        hit = frame[ids.str.split(":", n=1).str[-1] == wanted]
    if hit.empty:
        hit = frame[frame["name"].astype(str).str.lower() == wanted.lower()]
    if len(hit) > 1:
        raise NoMatchError(f"--account {account!r}: {len(hit)} accounts match; give one id of: {', '.join(hit['account_id'].astype(str).head(5))}")
    if hit.empty:
        raise no_match("--account", account, "account", list(ids) + [str(n) for n in frame["name"] if n])
    record = hit.iloc[0].to_dict()
    return str(record["account_id"]), record


def _usage(store: StateStore, account_id: str, now: datetime) -> pd.DataFrame:
    uh = store.tables["usage_history"]
    since = (naive_ts(now) - pd.Timedelta(days=USAGE_DAYS)).date()
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(uh.c.day, uh.c.active_users, uh.c.seats_purchased, uh.c.logins_per_user_week, uh.c.features_used,
                   uh.c.features_available).where(uh.c.account_id == account_id, uh.c.day >= since).order_by(uh.c.day)
        ).all()
    frame = pd.DataFrame.from_records([tuple(r) for r in rows], columns=["day", "active_users", "seats_purchased", "logins_per_user_week",
                                                                         "features_used", "features_available"])
    frame["day"] = pd.to_datetime(frame["day"])
    return frame


def _tickets(store: StateStore, account_id: str) -> pd.DataFrame:
    rep = store.tables["replica"]
    needle = json.dumps(account_id)  # the replica stores canonical JSON: "account_id":"<id>"
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(rep.c.data_json).where(rep.c.object == "tickets", rep.c.deleted == False,  # noqa: E712
                                          rep.c.data_json.contains(f'"account_id":{needle}'))
        ).scalars().all()
    records = [r for r in (json.loads(t) for t in rows) if r.get("account_id") == account_id]
    frame = pd.DataFrame.from_records(records, columns=["created_at", "closed_at", "status", "priority"])
    for col in ("created_at", "closed_at"):
        frame[col] = pd.to_datetime(frame[col], errors="coerce", utc=True, format="ISO8601").dt.tz_localize(None)
    return frame


def load_customer_data(store: StateStore, settings: Settings, account: str, now: datetime | None = None) -> CustomerData:
    """The customer page's data for the account `account` names (NoMatchError, exit 2, when none)."""
    now = now or datetime.now(timezone.utc)
    account_id, record = resolve_customer_account(store, account)
    email = record.get("owner_email")
    names = owner_names(store)
    return CustomerData(
        now=now,
        account=record,
        csm_name=names.get(str(email).lower()) if email else None,
        csm_email=str(email) if email else None,
        usage=_usage(store, account_id, now),
        tickets=_tickets(store, account_id),
    )


# ----------------------------------------------------------------------------- what the page says


def _pct(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return part / whole


def _growth(series: pd.Series) -> tuple[float | None, float | None]:
    """(first, last) known values of a usage series."""
    known = pd.to_numeric(series, errors="coerce").dropna()
    if known.empty:
        return None, None
    return float(known.iloc[0]), float(known.iloc[-1])


def adoption(data: CustomerData) -> dict[str, Any]:
    a = data.account
    users, seats = _number(a.get("active_users_30d")), _number(a.get("seats_purchased"))
    used, available = _number(a.get("features_used")), _number(a.get("features_available"))
    return {
        "active_users": users,
        "seats": seats,
        "seat_share": _pct(users, seats),
        "seats_free": max(seats - users, 0) if users is not None and seats is not None else None,
        "features_used": used,
        "features_available": available,
        "feature_share": _pct(used, available),
        "logins": _number(a.get("logins_per_user_week")),
    }


def support(data: CustomerData) -> dict[str, Any]:
    t = data.tickets
    start = naive_ts(data.now) - pd.Timedelta(days=SUPPORT_DAYS)
    opened = t[t["created_at"] >= start] if len(t) else t
    resolved = t[(t["closed_at"] >= start)] if len(t) else t
    hours = ((resolved["closed_at"] - resolved["created_at"]).dt.total_seconds() / 3600).dropna() if len(resolved) else pd.Series(dtype=float)
    open_now = int((t["status"].astype(str) == "open").sum()) if len(t) else 0
    return {
        "days": SUPPORT_DAYS,
        "opened": int(len(opened)),
        "resolved": int(len(resolved)),
        "median_hours": float(hours.median()) if len(hours) else None,
        "open_now": open_now,
    }


def _since(day: pd.Timestamp) -> str:
    return pd.Timestamp(day).strftime("%b %d, %Y").replace(" 0", " ")


def highlights(data: CustomerData, adopt: dict[str, Any], supp: dict[str, Any]) -> list[str]:
    """The value delivered, as sentences to celebrate (seed 001: "celebrating growth")."""
    out = []
    usage = data.usage
    if len(usage) >= 2:
        first, last = _growth(usage["active_users"])
        if first and last is not None and last > first:
            out.append(f"Active users grew {100 * (last - first) / first:.0f}% since {_since(usage['day'].iloc[0])}, "
                       f"from {first:,.0f} to {last:,.0f}.")
        f_first, f_last = _growth(usage["features_used"])
        if f_first is not None and f_last is not None and f_last > f_first:
            out.append(f"Your team started using {f_last - f_first:,.0f} more feature{'s' if f_last - f_first != 1 else ''} since "
                       f"{_since(usage['day'].iloc[0])}.")
    if adopt["active_users"] is not None:
        seats = f" of {adopt['seats']:,.0f} seats" if adopt["seats"] else ""
        out.append(f"{adopt['active_users']:,.0f} active users{seats} in the last 30 days.")
    if adopt["features_used"] is not None and adopt["features_available"]:
        out.append(f"Using {adopt['features_used']:,.0f} of {adopt['features_available']:,.0f} core features.")
    if supp["resolved"]:
        median = f", typically within {_duration(supp['median_hours'])}" if supp["median_hours"] is not None else ""
        out.append(f"{supp['resolved']:,} support request{'s' if supp['resolved'] != 1 else ''} resolved in the last "
                   f"{supp['days']} days{median}.")
    since = pd.to_datetime(data.account.get("customer_since"), errors="coerce")
    if since is not None and not pd.isna(since):
        out.append(f"Working together since {pd.Timestamp(since).strftime('%B %Y')}.")
    return out


def next_steps(adopt: dict[str, Any]) -> list[str]:
    """Where more value is (seed 001: "To unlock even more value"), positive and concrete."""
    out = []
    if adopt["seats_free"]:
        out.append(f"Invite more colleagues: {adopt['seats_free']:,.0f} seat{'s are' if adopt['seats_free'] != 1 else ' is'} "
                   "included in your plan and ready to use.")
    if adopt["features_available"] and adopt["features_used"] is not None and adopt["features_used"] < adopt["features_available"]:
        left = adopt["features_available"] - adopt["features_used"]
        out.append(f"Explore the {left:,.0f} feature{'s' if left != 1 else ''} your team has not tried yet; we are happy to run a short session.")
    if adopt["logins"] is not None and adopt["logins"] < 3:
        out.append("Make it part of the weekly routine: teams that log in several times a week get the most out of it.")
    if not out:
        out.append("Share what is working with other teams in your organisation: we can help you roll it out.")
    return out


def _duration(hours: float | None) -> str:
    if hours is None:
        return "-"
    return f"{hours:.0f} hours" if hours < 48 else f"{hours / 24:.1f} days"


def usage_chart(usage: pd.DataFrame) -> str | None:
    """Active users per day with the seats purchased (dashed), as inline SVG; None with fewer than two days."""
    frame = usage.dropna(subset=["active_users"])
    if len(frame) < 2:
        return None
    values = [{"date": d.strftime("%Y-%m-%d"), "users": float(u), "seats": None if pd.isna(s) else float(s)}
              for d, u, s in zip(frame["day"], frame["active_users"], frame["seats_purchased"])]
    data = alt.Data(values=values)
    x = alt.X("date:T", title=None, axis=alt.Axis(format="%b %d", labelOverlap=True))
    users = alt.Chart(data).mark_line(color=ACCENT, strokeWidth=2, point=True).encode(x=x, y=alt.Y("users:Q", title="Active users"))
    seats = alt.Chart(data).mark_line(color=SOFT, strokeDash=[4, 3]).encode(x=x, y="seats:Q")
    return charts.svg(alt.layer(seats, users).properties(width=300, height=140))


def logins_chart(usage: pd.DataFrame) -> str | None:
    frame = usage.dropna(subset=["logins_per_user_week"])
    if len(frame) < 2:
        return None
    values = [{"date": d.strftime("%Y-%m-%d"), "logins": float(v)} for d, v in zip(frame["day"], frame["logins_per_user_week"])]
    chart = alt.Chart(alt.Data(values=values)).mark_area(color=ACCENT, opacity=0.25, line={"color": ACCENT}).encode(
        x=alt.X("date:T", title=None, axis=alt.Axis(format="%b %d", labelOverlap=True)),
        y=alt.Y("logins:Q", title="Logins per user per week"))
    return charts.svg(chart.properties(width=300, height=140))


def support_chart(data: CustomerData) -> str | None:
    t = data.tickets
    if t.empty:
        return None
    end = naive_ts(data.now).to_period("M")
    months = pd.period_range(end - (SUPPORT_MONTHS - 1), end, freq="M")
    opened = t["created_at"].dt.to_period("M").value_counts()
    resolved = t["closed_at"].dropna().dt.to_period("M").value_counts()
    values = []
    for m in months:
        values.append({"month": m.strftime("%b %Y"), "series": "Opened", "requests": int(opened.get(m, 0))})
        values.append({"month": m.strftime("%b %Y"), "series": "Resolved", "requests": int(resolved.get(m, 0))})
    if not any(v["requests"] for v in values):
        return None
    chart = alt.Chart(alt.Data(values=values)).mark_bar().encode(
        x=alt.X("month:N", sort=None, title=None, axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("series:N"),
        y=alt.Y("requests:Q", title="Requests", axis=alt.Axis(tickMinStep=1, format="d")),
        color=alt.Color("series:N", scale=alt.Scale(domain=["Opened", "Resolved"], range=[SOFT, ACCENT]),
                        legend=alt.Legend(orient="bottom", title=None)))
    return charts.svg(chart.properties(width=300, height=120))


def render_customer(data: CustomerData) -> str:
    adopt, supp = adoption(data), support(data)
    usage = data.usage
    trend_note = None
    if len(usage.dropna(subset=["active_users"])) < 2:
        trend_note = "Usage trends build up from here: the next review will show how these figures move."
    context = {
        "version": version(),
        "account": data.account,
        "date": naive_ts(data.now).strftime("%B %d, %Y").replace(" 0", " "),
        "csm_name": data.csm_name or data.csm_email,
        "csm_email": data.csm_email,
        "adoption": adopt,
        "support": supp,
        "median_resolution": _duration(supp["median_hours"]),
        "highlights": highlights(data, adopt, supp),
        "next_steps": next_steps(adopt),
        "usage_svg": usage_chart(usage),
        "logins_svg": logins_chart(usage),
        "support_svg": support_chart(data),
        "trend_note": trend_note,
        "period_start": _since(usage["day"].iloc[0]) if len(usage) else None,
    }
    return environment().get_template(TEMPLATE).render(**context)


def write_customer_report(store: StateStore, settings: Settings, path: str | Path, account: str, *,
                          now: datetime | None = None) -> ReportInfo:
    """Render the customer-facing page of the account `account` names to `path` (atomically)."""
    require_state(store)
    data = load_customer_data(store, settings, account, now=now)
    html = render_customer(data)
    size = write_atomically(Path(path), html)
    return ReportInfo(path=Path(path), size_bytes=size, accounts=1, charts=html.count("<svg"))
