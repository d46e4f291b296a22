"""Canonical frames -> one row of metric inputs per account, as of a date.

Only data on or before `as_of` is used (tickets created after it are
ignored, a ticket closed after it still counts as open), so a backtest
scoring last year's snapshot never sees the future. Windows are trailing and
include the as_of day: the 30-day window is (as_of - 30 days, as_of].

Absent vs zero: an account with no tickets in a window has a ticket rate of 0
(a known zero count). When the `tickets` frame is not supplied at all, the
ticket columns are simply not created, so ticket metrics are absent and their
weight is redistributed. The same holds for opportunities and usage.

All accounts columns pass through untouched (custom signals, product usage
columns): a metric may read any of them.
"""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pandas as pd

from healthsync.config.model import ModelConfig
from healthsync.engine.inputs import OPPORTUNITY_FEATURES, TICKET_FEATURES, model_inputs  # noqa: F401 - re-exported
from healthsync.engine.keys import KeyIndex, equals_any, has_duplicates, map_chunks, positions
from healthsync.engine.lifecycle import lifecycle_stage
from healthsync.engine.rules import _boolean, numeric_column
from healthsync.engine.usage import account_usage_columns

SHORT_WINDOW_DAYS = 30
LONG_WINDOW_DAYS = 90  # seed 003: escalations and P1s "in the last 90 days"; ticket trend 30 vs 90
USAGE_WINDOW_DAYS = 28


def as_of_timestamp(as_of: date | datetime | str | pd.Timestamp | None) -> pd.Timestamp:
    """The as_of day at midnight (naive UTC); None means today (UTC)."""
    if as_of is None:
        return pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()
    ts = pd.Timestamp(as_of)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.normalize()


def _naive_utc(values: pd.Series) -> pd.Series:
    """datetime64 without timezone, in UTC (unparseable -> NaT)."""
    if not pd.api.types.is_datetime64_any_dtype(values.dtype):
        values = pd.to_datetime(values, errors="coerce", utc=True)
    if getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return values


def _days_between(later: pd.Timestamp | pd.Series, earlier) -> np.ndarray:
    delta = later - earlier
    if isinstance(delta, pd.Series):
        return delta.dt.days.to_numpy(dtype="float64", na_value=np.nan).copy()
    return np.asarray(delta.days, dtype="float64")


def _account_positions(accounts: pd.DataFrame, account_ids: pd.Series) -> np.ndarray:
    """Row position in `accounts` of each id (-1 for ids not in the accounts frame)."""
    return positions(account_ids, accounts["account_id"])


def _datetimes(values: pd.Series) -> np.ndarray:
    """datetime64 values (naive UTC) in their own unit: no 10M-row conversion to nanoseconds."""
    return _naive_utc(values).to_numpy()


def _ticket_flags(tickets: pd.DataFrame, end: pd.Timestamp) -> tuple[np.ndarray, np.ndarray]:
    """(in the 90-day window, flag bits) per ticket: bit 0 last 30 days, bit 1 escalated, bit 2 open P1."""
    created = _datetimes(tickets["created_at"])
    unit = np.datetime_data(created.dtype)[0]  # compare in the column's own unit: no per-row cast

    def at(ts: pd.Timestamp) -> np.datetime64:
        return np.datetime64(ts.to_datetime64(), unit)

    end64 = at(end)
    in_long = (created < end64) & (created >= at(end - pd.Timedelta(days=LONG_WINDOW_DAYS)))
    flags = (created >= at(end - pd.Timedelta(days=SHORT_WINDOW_DAYS))).astype(np.int64)  # NaT compares False
    if "escalated" in tickets.columns:
        column = tickets["escalated"]
        if pd.api.types.is_bool_dtype(column.dtype):
            escalated = column.to_numpy(dtype=bool, na_value=False)
        else:  # "true"/"false" text or 0/1 from a file that skipped dtype coercion
            escalated = _boolean(tickets, "escalated") == 1.0
        flags |= escalated.astype(np.int64) << 1
    if "priority" in tickets.columns:
        p1 = equals_any(tickets["priority"], ("P1",))
        # open as of `end`: not closed yet, or closed only after it
        if "closed_at" in tickets.columns:
            closed = _datetimes(tickets["closed_at"])
            no_close_date = np.isnat(closed)
            closed_by_then = ~no_close_date & (closed < np.datetime64(end.to_datetime64(), np.datetime_data(closed.dtype)[0]))
        else:
            no_close_date = np.ones(len(tickets), dtype=bool)
            closed_by_then = np.zeros(len(tickets), dtype=bool)
        if "status" in tickets.columns:
            closed_by_then |= no_close_date & equals_any(tickets["status"], ("closed",))
        flags |= (p1 & ~closed_by_then).astype(np.int64) << 2
    return in_long, flags


def _ticket_features(accounts: pd.DataFrame, tickets: pd.DataFrame, end: pd.Timestamp) -> dict[str, np.ndarray]:
    n = len(accounts)
    lookup = KeyIndex(accounts["account_id"])

    def chunk_keys(start: int, stop: int) -> np.ndarray:
        chunk = tickets.iloc[start:stop]
        in_long, flags = _ticket_flags(chunk, end)
        # only tickets in the 90-day window count: look up the accounts of those alone (the id
        # join is the costly part, and older tickets are most of a long history)
        rows = np.flatnonzero(in_long)
        pos = lookup.positions(chunk["account_id"], rows)
        found = pos >= 0
        # one counting pass at the end: each ticket in the window adds to (account, flag combination)
        return pos[found] * 8 + flags[rows[found]]

    keys = map_chunks(chunk_keys, len(tickets), 1_048_576)
    all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
    # counts per (account, flag combination); each feature sums the combinations with its bit set,
    # taken as strided views of the integer counts (no copies), then made float once per feature
    counts = np.bincount(all_keys, minlength=n * 8).reshape(n, 8)
    out = {
        "tickets_30d": counts[:, 1::2].sum(axis=1).astype("float64"),  # bit 0: combinations 1, 3, 5, 7
        "tickets_90d": counts.sum(axis=1).astype("float64"),
    }
    out["tickets_rate_30d"] = out["tickets_30d"] / SHORT_WINDOW_DAYS
    out["tickets_rate_90d"] = out["tickets_90d"] / LONG_WINDOW_DAYS
    if "escalated" in tickets.columns:  # bit 1: combinations 2, 3, 6, 7
        out["escalations_90d"] = (counts[:, 2:4].sum(axis=1) + counts[:, 6:8].sum(axis=1)).astype("float64")
    if "priority" in tickets.columns:  # bit 2: combinations 4 to 7
        out["open_p1_90d"] = counts[:, 4:8].sum(axis=1).astype("float64")
    return out


def _opportunity_features(accounts: pd.DataFrame, opps: pd.DataFrame, end: pd.Timestamp) -> dict[str, np.ndarray]:
    n = len(accounts)
    pos = _account_positions(accounts, opps["account_id"])
    is_closed = (
        opps["is_closed"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        if "is_closed" in opps.columns
        else np.zeros(len(opps), dtype=bool)
    )
    open_ = (pos >= 0) & ~is_closed
    amount = numeric_column(opps, "amount")
    return {
        "open_opportunities": np.bincount(pos[open_], minlength=n).astype("float64"),
        "open_pipeline_amount": np.bincount(pos[open_], weights=np.nan_to_num(amount[open_]), minlength=n),
    }


def _usage_features(accounts: pd.DataFrame, usage: pd.DataFrame, end: pd.Timestamp) -> dict[str, np.ndarray]:
    """Daily usage rows (account_id, date, active_users, logins) -> trailing 28-day values.

    logins_per_user_week = logins in the window / 4 weeks / peak daily active users.
    Accounts with no usage rows in the window keep their accounts-frame values.
    """
    n = len(accounts)
    pos = _account_positions(accounts, usage["account_id"])
    day = _datetimes(usage["date"])
    start = (end - pd.Timedelta(days=USAGE_WINDOW_DAYS)).to_datetime64()
    rows = (pos >= 0) & ~np.isnat(day) & (day < end.to_datetime64()) & (day >= start)
    seen = np.bincount(pos[rows], minlength=n) > 0
    out: dict[str, np.ndarray] = {}
    if "active_users" in usage.columns:
        users = np.nan_to_num(numeric_column(usage, "active_users"))
        peak = np.zeros(n)
        np.maximum.at(peak, pos[rows], users[rows])
        out["active_users_30d"] = np.where(seen, peak, np.nan)
        if "logins" in usage.columns:
            logins = np.nan_to_num(numeric_column(usage, "logins"))
            total = np.bincount(pos[rows], weights=logins[rows], minlength=n)
            with np.errstate(divide="ignore", invalid="ignore"):
                out["logins_per_user_week"] = np.where(seen & (peak > 0), total / (USAGE_WINDOW_DAYS / 7) / peak, np.nan)
    return out


def build_features(
    accounts: pd.DataFrame,
    tickets: pd.DataFrame | None = None,
    opportunities: pd.DataFrame | None = None,
    usage: pd.DataFrame | None = None,
    as_of: date | datetime | str | None = None,
    model: ModelConfig | None = None,
    account_usage: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per account: the accounts columns plus computed metric inputs.

    Computed: tickets_30d, tickets_90d, tickets_rate_30d, tickets_rate_90d,
    escalations_90d, open_p1_90d (with tickets); open_opportunities,
    open_pipeline_amount (with opportunities); tenure_days, days_to_renewal,
    license_utilization, feature_adoption (from accounts columns);
    lifecycle_stage (when `model` is given). Duplicate account ids keep the
    last row.

    `account_usage` (one row per account_id, from the warehouse; engine/usage.py) is
    authoritative for the columns it holds: they replace the accounts frame's, and an
    account without a row gets NaN there (no usage known: absent, never zero).
    """
    if "account_id" not in accounts.columns:
        raise ValueError("accounts: the account_id column is required")
    end_day = as_of_timestamp(as_of)
    end = end_day + pd.Timedelta(days=1)  # windows include the whole as_of day
    if has_duplicates(accounts["account_id"]):
        accounts = accounts.drop_duplicates("account_id", keep="last")
    features = accounts.reset_index(drop=True).copy(deep=False)  # new columns only; inputs untouched
    computed: dict[str, np.ndarray] = {}

    if tickets is not None:
        computed.update(_ticket_features(features, tickets, end))
    if opportunities is not None:
        computed.update(_opportunity_features(features, opportunities, end))
    if usage is not None:
        for col, values in _usage_features(features, usage, end).items():
            current = numeric_column(features, col)
            computed[col] = np.where(np.isnan(values), current, values)
    if account_usage is not None:
        computed.update(account_usage_columns(features, account_usage))

    if "customer_since" in features.columns:
        since = _naive_utc(features["customer_since"])
        tenure = _days_between(end_day, since)
        tenure[tenure < 0] = np.nan  # not a customer yet on as_of
        computed["tenure_days"] = tenure
    if "renewal_date" in features.columns:
        computed["days_to_renewal"] = _days_between(_naive_utc(features["renewal_date"]), end_day)

    with np.errstate(divide="ignore", invalid="ignore"):
        for name, num, den in (
            ("license_utilization", "active_users_30d", "seats_purchased"),
            ("feature_adoption", "features_used", "features_available"),
        ):
            if num in features.columns or num in computed:
                n_ = computed.get(num, numeric_column(features, num))
                d_ = numeric_column(features, den)
                computed[name] = np.where(d_ > 0, n_ / d_, np.nan)

    for col in [c for c in computed if c in features.columns]:  # a column replaced keeps its place
        features[col] = computed.pop(col)
    if computed:  # the new ones added in one step: one block, not one insertion (and copy) per column
        features = pd.concat([features, pd.DataFrame(computed, index=features.index, copy=False)], axis=1)
    if model is not None:
        features["lifecycle_stage"] = lifecycle_stage(features, model).to_numpy()
    return features
