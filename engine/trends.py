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

from healthsync.engine.features import _naive_utc, as_of_timestamp
from healthsync.engine.keys import arrow_strings, positions, take_strings

MOMENTUM = ("up", "stable", "down")


def _latest_before(pos: np.ndarray, when: np.ndarray, value: np.ndarray, is_history: np.ndarray,
                   cutoff: int, n: int) -> np.ndarray:
    """Per account, the value of its latest history row at or before `cutoff` (NaN if none).

    Rows are sorted by (account, time), so the rows at or before the cutoff form a
    prefix of each account's run and the last row of that prefix is the answer.
    """
    eligible = is_history & (when <= cutoff)
    last = eligible.copy()
    last[:-1] &= (pos[1:] != pos[:-1]) | ~eligible[1:]
    prior = np.full(n, np.nan)
    prior[pos[last]] = value[last]
    return prior


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
        at = _naive_utc(history["scored_at"]).dt.normalize().to_numpy(dtype="datetime64[ns]")
        pos = positions(history["account_id"], current["account_id"])
        # never the future, nor an earlier run of today; accounts not scored now are irrelevant
        keep = (pos >= 0) & ~np.isnat(at) & (at < day.to_datetime64())
        hist_pos, hist_at = pos[keep], at[keep]
        hist_score = pd.to_numeric(history["score"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)[keep]
        hist_band = history["band"][keep]

    out = pd.DataFrame(index=current.index)
    out["account_id"] = current["account_id"].to_numpy()
    today = day.to_datetime64().astype("datetime64[ns]").view("int64")
    if hist_pos.size == 0:
        nothing = np.full(n, np.nan)
        out["delta_30d"], out["delta_90d"] = nothing, nothing.copy()
        out["momentum"] = take_strings(MOMENTUM, np.full(n, -1))
        out["days_in_band"] = np.zeros(n, dtype=np.int64)
        return out

    # one sort of history + today's rows by (account, time); today's row ends each account's run
    pos = np.concatenate([hist_pos, np.arange(n)])
    when = np.concatenate([hist_at.astype("datetime64[ns]").view("int64"), np.full(n, today)])
    value = np.concatenate([hist_score, np.full(n, np.nan)])
    is_history = np.concatenate([np.ones(hist_pos.size, dtype=bool), np.zeros(n, dtype=bool)])
    bands = pa.concat_arrays([arrow_strings(hist_band), arrow_strings(current["band"])])
    band_code = pc.fill_null(pc.dictionary_encode(bands).indices, -1).to_numpy(zero_copy_only=False)
    order = np.lexsort((when, pos))
    pos, when, value, is_history, band_code = pos[order], when[order], value[order], is_history[order], band_code[order]

    day_ns = 86_400 * 10**9
    delta_30 = score - _latest_before(pos, when, value, is_history, today - 30 * day_ns, n)
    delta_90 = score - _latest_before(pos, when, value, is_history, today - 90 * day_ns, n)
    out["delta_30d"] = np.round(delta_30, 1)
    out["delta_90d"] = np.round(delta_90, 1)
    momentum = np.where(delta_30 > stable_within, 0, np.where(delta_30 < -stable_within, 2, 1))
    out["momentum"] = take_strings(MOMENTUM, np.where(np.isnan(delta_30), -1, momentum))

    # days in band: where each account's last run of its current band began
    new_run = np.ones(len(pos), dtype=bool)
    new_run[1:] = (pos[1:] != pos[:-1]) | (band_code[1:] != band_code[:-1])
    entered_at = np.full(n, today)
    # runs are in time order within an account, so the last run start written wins
    starts = np.flatnonzero(new_run)
    last_start = np.ones(starts.size, dtype=bool)
    last_start[:-1] = pos[starts][1:] != pos[starts][:-1]
    entered_at[pos[starts][last_start]] = when[starts][last_start]
    out["days_in_band"] = (today - entered_at) // day_ns
    return out
