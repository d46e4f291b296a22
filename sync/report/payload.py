"""What the page's script receives: the report's data, compact, compressed, inside the HTML.

Why compressed: at 10,000 accounts with a year of daily scores and 50,000 open
opportunities the plain JSON is several times the 5 MB the file may weigh. The
payload is JSON, gzip-compressed and base64-encoded into a
`<script type="application/octet-stream">` element; the page inflates it with
the browser's own `DecompressionStream` (no library, no network).

Shape (the contract between this module and assets/report.js):

    meta       labels and code lists (bands, CRMs, owners, segments, lifecycle stages, playbooks,
               stages, opportunity types), `links` (links.py templates), the history grid, `now_day`
    accounts   one list per column, one entry per account in priority order; categorical columns
               hold codes into the meta lists; days are days since 1970-01-01 (UTC)
    history    per account: `series` = one value per grid point (score x 10, the first known one
               absolute, the next ones as the change from the previous known one, null where the
               account had no score that day) and `bands` = [day, band code] at each band change
               (the first entry is the band on the first scored day)
    opps, tasks, escalations   one list per column; `acct` = the account's position in `accounts`

Score history resolution: one point per day while accounts x days stays within
HISTORY_POINTS; beyond that (a year of 10,000 accounts) the most recent days stay
daily and older ones are weekly (the last score of each week), which the page says.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from healthsync.sync.report.data import NO_OWNER, RENEWAL_HORIZON_DAYS, ReportData, naive_ts
from healthsync.sync.report.links import link_templates

#: accounts x grid points of score history shipped to the page (the file stays under 5 MB at 10,000 accounts)
HISTORY_POINTS = 1_200_000
#: never fewer daily points than this per account, whatever the portfolio size
MIN_DAILY_POINTS = 60
#: renewal windows the filter offers (days ahead)
RENEWAL_WINDOWS = (30, 60, 90, 180, 365)
CRM_LABELS = {"salesforce": "Salesforce", "hubspot": "HubSpot"}
EPOCH = pd.Timestamp("1970-01-01")


def _days(values: pd.Series) -> list[int | None]:
    """Datetimes -> days since 1970-01-01 (None where missing)."""
    ts = pd.to_datetime(values, errors="coerce")
    days = ((ts - EPOCH).dt.days).astype("float64").to_numpy()
    return [None if math.isnan(d) else int(d) for d in days]


def _rounded(values: Iterable, digits: int) -> list[float | None]:
    arr = np.round(np.asarray(pd.to_numeric(pd.Series(list(values) if not isinstance(values, pd.Series) else values),
                                            errors="coerce"), dtype="float64"), digits)
    return [None if math.isnan(v) else (int(v) if digits == 0 else float(v)) for v in arr.tolist()]


def _codes(values: pd.Series, labels: list[str]) -> list[int | None]:
    index = {label: i for i, label in enumerate(labels)}
    return [index.get(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else None for v in values.astype(object)]


def _labels(values: Iterable, first: Sequence[str] = ()) -> list[str]:
    seen = [str(v) for v in first]
    for v in sorted({str(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}):
        if v not in seen:
            seen.append(v)
    return seen


def history_grid(first_day: int, last_day: int, accounts: int, budget: int = HISTORY_POINTS) -> tuple[list[int], int]:
    """The days the trend has a point for, and the first of them from which every day has one.

    Daily when accounts x days fits `budget`, else daily for as many recent days as fit and one
    point per week (its last day) before.
    """
    span = last_day - first_day + 1
    per_account = max(MIN_DAILY_POINTS, budget // max(accounts, 1))
    if span <= per_account:
        return list(range(first_day, last_day + 1)), first_day
    daily = per_account
    while daily > 1 and daily + math.ceil((span - daily) / 7) > per_account:
        daily -= 1
    daily_from = last_day - daily + 1
    weekly = list(range(daily_from - 7, first_day - 1, -7))[::-1]
    return weekly + list(range(daily_from, last_day + 1)), daily_from


def _history(data: ReportData, position: dict[str, int], band_codes: dict[str, int]) -> tuple[dict, dict]:
    """Per-account score series on the grid and band changes (see the module docstring)."""
    n = len(position)
    hist = data.history
    if hist.empty or n == 0:
        return {"series": [[] for _ in range(n)], "bands": [[] for _ in range(n)]}, {"grid": [], "daily_from": None,
                                                                                      "scored_days": data.scored_days}
    # codes, not strings: the history is a year of rows (data._history sorts it by account, then day)
    categories = hist["account_id"].cat.categories
    to_position = pd.Index(list(position), dtype=object).get_indexer(categories.astype(object))
    rows = to_position[hist["account_id"].cat.codes.to_numpy()]
    band_map = np.array([band_codes.get(str(b), -1) for b in hist["band"].cat.categories] + [-1], dtype=np.int64)
    bands = band_map[hist["band"].cat.codes.to_numpy()]  # code -1 (no band) picks the trailing -1
    days = hist["day"].to_numpy(dtype=np.int64)
    scores = hist["score"].to_numpy(dtype="float64")
    keep = rows >= 0
    rows, days, scores, bands = rows[keep], days[keep], scores[keep], bands[keep]
    first, last = int(days.min()), int(days.max())
    grid, daily_from = history_grid(first, last, n)
    grid_arr = np.asarray(grid, dtype=np.int64)

    # a grid point holds the last score on or before its day within its bucket (the day itself when daily)
    slot = np.searchsorted(grid_arr, days, side="left")  # the first grid day >= the scored day
    matrix = np.full((n, len(grid)), np.nan)
    order = np.lexsort((days, rows))  # by account, then day: later days overwrite earlier ones in the bucket
    matrix[rows[order], slot[order]] = scores[order]
    tenths = np.round(matrix * 10)
    known = ~np.isnan(tenths)
    filled = pd.DataFrame(tenths).ffill(axis=1).to_numpy()
    previous = np.concatenate([np.full((n, 1), np.nan), filled[:, :-1]], axis=1)
    encoded = np.where(np.isnan(previous), tenths, tenths - previous)
    cells = np.where(known, encoded, 0).astype(np.int64).astype(object)
    cells[~known] = None
    series = cells.tolist()

    # band changes on their exact days: the first row of each account, and every row whose band differs
    r, d, b = rows[order], days[order], bands[order]
    valid = b >= 0
    r, d, b = r[valid], d[valid], b[valid]
    moved = np.ones(len(r), dtype=bool)
    moved[1:] = (r[1:] != r[:-1]) | (b[1:] != b[:-1])
    changes: list[list[list[int]]] = [[] for _ in range(n)]
    for row, day, band in zip(r[moved].tolist(), d[moved].tolist(), b[moved].tolist()):
        changes[row].append([day, band])
    return {"series": series, "bands": changes}, {"grid": grid, "daily_from": daily_from, "scored_days": data.scored_days}


def build_payload(data: ReportData, *, title: str, version: str, stable_within: float,
                  lifecycle_order: Sequence[str] = ()) -> dict[str, Any]:
    """The page's data (see the module docstring)."""
    acc = data.accounts
    position = {str(a): i for i, a in enumerate(acc["account_id"])}
    band_names = [b.name for b in data.bands]
    band_codes = {name: i for i, name in enumerate(band_names)}
    crms = _labels(acc["crm"], first=[c for c in ("salesforce", "hubspot") if c in set(acc["crm"])])
    owner_emails = _labels(acc["owner_email"])
    segments = _labels(acc["segment"], first=[s for s in ("enterprise", "mid_market", "smb") if s in set(acc["segment"])])
    present = set(acc["lifecycle"])
    lifecycles = _labels(acc["lifecycle"], first=[s for s in lifecycle_order if s in present])
    opps, tasks, esc = data.opportunities, data.tasks, data.escalations
    stages = _labels(opps["stage"])
    types = _labels(opps["type"])
    playbooks = _labels(list(tasks["playbook"]) + list(esc["playbook"]))
    history, grid = _history(data, position, band_codes)

    dims = data.dimensions
    dim_rows = [[None if not isinstance(d.get(k), (int, float)) or isinstance(d.get(k), bool) else round(float(d[k]), 1)
                 for k in dims] for d in acc["dimensions"]] if len(acc) else []

    momentum = acc["momentum"].astype(object).map({"up": 1, "stable": 0, "down": -1}) if len(acc) else acc["momentum"]
    accounts = {
        "id": [str(v) for v in acc["account_id"]],
        "name": [str(v) for v in acc["name"]],
        "crm": _codes(acc["crm"], crms),
        "owner": _codes(acc["owner_email"], owner_emails),
        "segment": _codes(acc["segment"], segments),
        "lifecycle": _codes(acc["lifecycle"], lifecycles),
        "band": _codes(acc["band"], band_names),
        "score": _rounded(acc["score"], 1),
        "confidence": _rounded(acc["confidence"], 2),
        "arr": _rounded(acc["arr"], 2),
        "renewal": _days(acc["renewal_date"]),
        "d30": _rounded(acc["delta_30d"], 1),
        "dprev": _rounded(acc["delta"], 1),
        "momentum": [None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v) for v in momentum],
        "renew": _rounded(acc["renewal_factor"], 3),
        "drivers": [str(v or "") for v in acc["drivers"]],
        "override": [_override_text(d, s) for d, s in zip(acc["dimensions"], acc["csm_sentiment"])],
        "dims": dim_rows,
    }
    owner_names = [data.owners.get(e.lower(), "") if e != NO_OWNER else "" for e in owner_emails]
    meta = {
        "title": title,
        "version": version,
        "generated": pd.Timestamp(naive_ts(data.now)).strftime("%Y-%m-%d %H:%M UTC"),
        "now_day": int((naive_ts(data.now).normalize() - EPOCH).days),
        "run": {k: (str(v) if v is not None else None) for k, v in data.run.items() if k in ("run_id", "scored_at", "mode", "status")},
        "owner_filter": data.owner,
        "focus": data.focus,
        "bands": [{"name": b.name, "color": b.color, "at_risk": b.at_risk, "configured": b.configured} for b in data.bands],
        "crms": crms,
        "crm_labels": [CRM_LABELS.get(c, c) for c in crms],
        "owners": [{"email": e, "name": n} for e, n in zip(owner_emails, owner_names)],
        "segments": segments,
        "lifecycles": lifecycles,
        "dimensions": dims,
        "stages": stages,
        "types": types,
        "playbooks": playbooks,
        "playbook_titles": {},
        "links": link_templates(data.instances),
        "history": grid,
        "renewal_windows": list(RENEWAL_WINDOWS),
        "renewal_horizon": RENEWAL_HORIZON_DAYS,
        "stable_within": stable_within,
        "adjusted_source": data.adjusted_source,
        "notes": list(data.notes),
    }
    return {
        "meta": meta,
        "accounts": accounts,
        "history": history,
        "opps": {
            "acct": [position[a] for a in opps["account_id"].astype(str)],
            "id": [str(v) for v in opps["opportunity_id"]],
            "crm": _codes(opps["crm"], crms),
            "name": [str(v or "") for v in opps["name"]],
            "stage": _codes(opps["stage"], stages),
            "type": _codes(opps["type"], types),
            "amount": _rounded(opps["amount"], 2),
            "prob": _rounded(opps["probability"], 4),
            "adj": _rounded(opps["adjusted_probability"], 4),
            "close": _days(opps["close_date"]),
        },
        "tasks": {
            "acct": [position[a] for a in tasks["account_id"].astype(str)],
            "crm": _codes(tasks["crm"], crms),
            "id": [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in tasks["task_id"]],
            "subject": [str(v) for v in tasks["subject"]],
            "playbook": _codes(tasks["playbook"], playbooks),
            "owner": _codes(tasks["owner_email"], owner_emails),
            "due": [None if pd.isna(v) else pd.Timestamp(v).strftime("%Y-%m-%d %H:%M") for v in tasks["task_due_at"]],
            "sla": [str(v) for v in tasks["sla_status"]],
            "hours": _rounded(tasks["hours_left"], 1),
        },
        "escalations": {
            "acct": [position[a] for a in esc["account_id"].astype(str)],
            "playbook": _codes(esc["playbook"], playbooks),
            "level": [str(v or "") for v in esc["level"]],
            "kind": [str(v or "") for v in esc["kind"]],
            "to": [str(r or c or "") for r, c in zip(esc["recipient"], esc["channel"])],
            "sent": [None if pd.isna(v) else pd.Timestamp(v).strftime("%Y-%m-%d %H:%M") for v in esc["sent_at"]],
        },
    }


#: Keys the score history may carry next to the dimension scores (the engine's override columns).
OVERRIDE_KEYS = ("override", "override_reason", "raw_band")


def _override_text(recorded: dict, sentiment: Any) -> str:
    """The CSM override as recorded with the score when it is, else the sentiment that feeds it."""
    recorded = recorded if isinstance(recorded, dict) else {}
    if recorded.get("override"):
        reason = recorded.get("override_reason") or "CSM sentiment"
        before = f" (computed band {recorded['raw_band']})" if recorded.get("raw_band") else ""
        return f"{reason}{before}"
    if "override" in recorded:
        return "none"
    if sentiment is None or (isinstance(sentiment, float) and math.isnan(sentiment)) or sentiment is pd.NA:
        return "no CSM sentiment"
    return f"sentiment {sentiment}; moves the band at most one tier"


def encode(payload: dict[str, Any]) -> str:
    """JSON -> gzip -> base64 (what the page's script inflates)."""
    raw = json.dumps(payload, separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def decode(text: str) -> dict[str, Any]:
    """The inverse of `encode` (tests read the payload back with it)."""
    return json.loads(gzip.decompress(base64.b64decode(text)))
