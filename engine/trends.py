"""Score trends from history (seed 001_9b7515619717186a.txt, "Trending").

`delta_30d` is today's score minus the most recent historical score on or
before as_of - 30 days (likewise 90). No snapshot that old -> NA (we don't
know), never 0. `momentum` is `up` / `down` beyond +-`stable_within` points
on the 30-day delta, `stable` within it, and NA when the delta is unknown
(an account with no history has no trend; the forecast then leaves its
opportunities on the band multiplier alone).

`days_in_band` counts days since the account entered its current band: the
first snapshot of the unbroken run of same-band snapshots that ends with
today's score. An account without history, or whose band changed today, has 0.
Only history on or before as_of is read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from engine.features import as_of_timestamp
from engine.keys import arrow_strings, positions, take_strings

MOMENTUM = ("up", "stable", "down")


def _delta(score: np.ndarray, hist_pos: np.ndarray, hist_at: np.ndarray, hist_score: np.ndarray,
           cutoff: pd.Timestamp) -> np.ndarray:
    """current score - the latest history score on or before `cutoff` (NaN if none)."""
    rows = np.flatnonzero(hist_at <= cutoff.to_datetime64())
    prior = np.full(len(score), np.nan)
    if rows.size:
        # sort by (account, time); the last row of each account is its latest snapshot
        order = rows[np.lexsort((hist_at[rows].view("int64"), hist_pos[rows]))]
        last = np.ones(order.size, dtype=bool)
        last[:-1] = hist_pos[order][1:] != hist_pos[order][:-1]
        prior[hist_pos[order][last]] = hist_score[order][last]
    return score - prior


def compute_trends(
    current: pd.DataFrame,
    history: pd.DataFrame | None,
    as_of=None,
    stable_within: float = 5.0,
) -> pd.DataFrame:
    """current[account_id, score, band] + history[account_id, scored_at, score, band] ->
    account_id, delta_30d, delta_90d, momentum, days_in_band (indexed like `current`)."""
    day = as_of_timestamp(as_of)
    n = len(current)
    score = current["score"].to_numpy(dtype="float64", na_value=np.nan)
    if history is None or len(history) == 0:
        hist_pos = np.zeros(0, dtype=np.int64)
        hist_at = np.zeros(0, dtype="datetime64[ns]")
        hist_score = np.zeros(0)
        hist_band = pd.Series([], dtype="string")
    else:
        if "scored_at" not in history.columns and "as_of" in history.columns:
            history = history.rename(columns={"as_of": "scored_at"})  # accounts-history snapshots
        missing = [c for c in ("account_id", "scored_at", "score", "band") if c not in history.columns]
        if missing:
            raise ValueError(f"score history: missing columns {missing} (need account_id, scored_at, score, band)")
        scored_at = pd.to_datetime(history["scored_at"], errors="coerce", utc=True).dt.tz_localize(None).dt.normalize()
        at = scored_at.to_numpy(dtype="datetime64[ns]")
        pos = positions(history["account_id"], current["account_id"])
        # never the future, nor an earlier run of today; accounts not scored now are irrelevant
        keep = (pos >= 0) & ~np.isnat(at) & (at < day.to_datetime64())
        hist_pos, hist_at = pos[keep], at[keep]
        hist_score = pd.to_numeric(history["score"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)[keep]
        hist_band = history["band"][keep]

    out = pd.DataFrame(index=current.index)
    out["account_id"] = current["account_id"].to_numpy()
    delta_30 = _delta(score, hist_pos, hist_at, hist_score, day - pd.Timedelta(days=30))
    delta_90 = _delta(score, hist_pos, hist_at, hist_score, day - pd.Timedelta(days=90))
    out["delta_30d"] = np.round(delta_30, 1)
    out["delta_90d"] = np.round(delta_90, 1)
    momentum = np.where(delta_30 > stable_within, 0, np.where(delta_30 < -stable_within, 2, 1))
    out["momentum"] = take_strings(MOMENTUM, np.where(np.isnan(delta_30), -1, momentum))

    # days in band: stack history and today, find where each account's last run of its band began
    today = day.to_datetime64().astype("datetime64[ns]").view("int64")
    if hist_pos.size == 0:
        out["days_in_band"] = np.zeros(n, dtype=np.int64)
        return out
    pos = np.concatenate([hist_pos, np.arange(n)])
    when = np.concatenate([hist_at.view("int64"), np.full(n, today)])
    bands = pa.concat_arrays([arrow_strings(hist_band), arrow_strings(current["band"])])
    band_code = pc.fill_null(pc.dictionary_encode(bands).indices, -1).to_numpy(zero_copy_only=False)
    order = np.lexsort((when, pos))
    pos, when, band_code = pos[order], when[order], band_code[order]
    new_run = np.ones(len(pos), dtype=bool)
    new_run[1:] = (pos[1:] != pos[:-1]) | (band_code[1:] != band_code[:-1])
    entered_at = np.full(n, today)
    # runs are in time order within an account, so the last run start written wins
    starts = np.flatnonzero(new_run)
    last_start = np.ones(starts.size, dtype=bool)
    last_start[:-1] = pos[starts][1:] != pos[starts][:-1]
    entered_at[pos[starts][last_start]] = when[starts][last_start]
    out["days_in_band"] = (today - entered_at) // (86_400 * 10**9)
    return out
