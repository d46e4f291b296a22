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

from engine.features import as_of_timestamp


def _delta(current: pd.DataFrame, history: pd.DataFrame, cutoff: pd.Timestamp) -> np.ndarray:
    """current score - latest history score on or before `cutoff` (NaN if none)."""
    old = history[history["scored_at"] <= cutoff]
    if old.empty:
        return np.full(len(current), np.nan)
    last = old.sort_values("scored_at").drop_duplicates("account_id", keep="last")
    ref = pd.Series(last["score"].to_numpy(dtype="float64"), index=last["account_id"].to_numpy())
    prior = ref.reindex(current["account_id"].to_numpy()).to_numpy(dtype="float64")
    return current["score"].to_numpy(dtype="float64") - prior


def compute_trends(
    current: pd.DataFrame,
    history: pd.DataFrame | None,
    as_of=None,
    stable_within: float = 5.0,
) -> pd.DataFrame:
    """current[account_id, score, band] + history[account_id, scored_at, score, band] ->
    account_id, delta_30d, delta_90d, momentum, days_in_band (indexed like `current`)."""
    day = as_of_timestamp(as_of)
    ids = current["account_id"].astype("string").to_numpy(dtype=object, na_value=None)
    cur = pd.DataFrame(
        {"account_id": ids, "score": current["score"].to_numpy(dtype="float64"), "band": current["band"].to_numpy(dtype=object)}
    )
    if history is None or len(history) == 0:
        hist = pd.DataFrame({"account_id": pd.Series([], dtype=object), "scored_at": pd.Series([], dtype="datetime64[ns]"),
                             "score": pd.Series([], dtype="float64"), "band": pd.Series([], dtype=object)})
    else:
        scored_at = pd.to_datetime(history["scored_at"], errors="coerce", utc=True).dt.tz_localize(None)
        hist = pd.DataFrame(
            {
                "account_id": history["account_id"].astype("string").to_numpy(dtype=object, na_value=None),
                "scored_at": scored_at.dt.normalize().to_numpy(),
                "score": pd.to_numeric(history["score"], errors="coerce").to_numpy(dtype="float64"),
                "band": history["band"].to_numpy(dtype=object),
            }
        )
        hist = hist[hist["scored_at"] < day]  # never the future, nor an earlier run of today

    out = pd.DataFrame(index=current.index)
    out["account_id"] = current["account_id"].to_numpy()
    delta_30 = _delta(cur, hist, day - pd.Timedelta(days=30))
    delta_90 = _delta(cur, hist, day - pd.Timedelta(days=90))
    out["delta_30d"] = np.round(delta_30, 1)
    out["delta_90d"] = np.round(delta_90, 1)
    momentum = np.where(delta_30 > stable_within, "up", np.where(delta_30 < -stable_within, "down", "stable")).astype(object)
    momentum[np.isnan(delta_30)] = pd.NA
    out["momentum"] = momentum

    # days in band: stack history and today, find each account's last band change
    n = len(cur)
    positions = pd.Index(ids).get_indexer(hist["account_id"].to_numpy(dtype=object))
    keep = positions >= 0
    pos = np.concatenate([positions[keep], np.arange(n)])
    when = np.concatenate([hist["scored_at"].to_numpy(dtype="datetime64[ns]")[keep], np.full(n, day.to_datetime64())])
    bands = pd.concat([hist["band"][keep], cur["band"]], ignore_index=True).astype("string").fillna("")
    band_code, _ = pd.factorize(bands)
    order = np.lexsort((when.view("int64"), pos))
    pos, when, band_code = pos[order], when[order], band_code[order]
    new_run = np.ones(len(pos), dtype=bool)
    new_run[1:] = (pos[1:] != pos[:-1]) | (band_code[1:] != band_code[:-1])
    entered = pd.Series(when[new_run].view("int64")).groupby(pos[new_run]).max()
    entered_at = np.full(n, day.to_datetime64().astype("datetime64[ns]").view("int64"))
    entered_at[entered.index.to_numpy()] = entered.to_numpy()
    out["days_in_band"] = (day.to_datetime64().astype("datetime64[ns]").view("int64") - entered_at) // (86_400 * 10**9)
    return out
