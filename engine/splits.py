"""Split a history into the part `calibrate` learns from and the part it is judged on.

Two ways, both refusing thin history with `InsufficientHistoryError`:

- time (the default with two or more `as_of` snapshots): the earlier
  snapshots train and the last `holdout` share of them (at least one)
  validate, so the model never learns from the future it is judged on;
- random (the default with a single, cross-sectional snapshot, or by
  choice): a stratified holdout of accounts (scikit-learn's
  `train_test_split`, stratified on whether the account ever churned, seeded),
  so every snapshot of one account stays on one side and both sides keep the
  churn rate.

Opportunities follow their snapshot (time) or their account (random); tickets
follow their account (random) and are kept whole for a time split (features
read only tickets created on or before each `as_of`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from healthsync.engine.backtest import HistoryFrames

SPLITS = ("auto", "time", "random")
DEFAULT_HOLDOUT = 0.25
DEFAULT_SEED = 0
MIN_CHURN_EVENTS = 50


class InsufficientHistoryError(ValueError):
    """The history cannot support a calibration; the message says what is too thin."""


@dataclass
class HistorySplit:
    kind: str  # "time" | "random"
    train: HistoryFrames
    validation: HistoryFrames
    description: str

    @property
    def train_periods(self) -> list[str]:
        return [d.date().isoformat() for d in self.train.as_of_dates]

    @property
    def validation_periods(self) -> list[str]:
        return [d.date().isoformat() for d in self.validation.as_of_dates]


def _span(dates: list[pd.Timestamp]) -> str:
    first, last = dates[0].date().isoformat(), dates[-1].date().isoformat()
    return first if first == last else f"{first} to {last}"


def _where(frame: pd.DataFrame | None, mask) -> pd.DataFrame | None:
    return None if frame is None else frame.loc[np.asarray(mask, dtype=bool)].reset_index(drop=True)


def _time_split(frames: HistoryFrames, holdout: float) -> HistorySplit:
    dates = frames.as_of_dates
    n_val = min(len(dates) - 1, max(1, round(len(dates) * holdout)))
    train_dates, val_dates = set(dates[:-n_val]), set(dates[-n_val:])
    acc, opps = frames.accounts_history, frames.opportunities_history

    def part(keep: set) -> HistoryFrames:
        return HistoryFrames(_where(acc, acc["as_of"].isin(keep)), frames.tickets,
                             None if opps is None else _where(opps, opps["as_of"].isin(keep)))

    return HistorySplit("time", part(train_dates), part(val_dates),
                        f"time split: {len(dates) - n_val} earlier snapshots train "
                        f"({_span(sorted(train_dates))}), the last {n_val} validate ({_span(sorted(val_dates))})")


def _random_split(frames: HistoryFrames, holdout: float, seed: int) -> HistorySplit:
    acc = frames.accounts_history
    ever = acc.groupby("account_id", sort=True)["churned"].max()
    ids, labels = ever.index.to_numpy(), ever.to_numpy()
    counts = np.bincount(labels, minlength=2)
    stratify = labels if counts.min() >= 2 else None
    train_ids, val_ids = train_test_split(ids, test_size=holdout, random_state=seed, stratify=stratify)
    train_ids, val_ids = set(train_ids), set(val_ids)

    def part(keep: set) -> HistoryFrames:
        opps, tickets = frames.opportunities_history, frames.tickets
        return HistoryFrames(
            _where(acc, acc["account_id"].isin(keep)),
            None if tickets is None else _where(tickets, tickets["account_id"].isin(keep)),
            None if opps is None else _where(opps, opps["account_id"].isin(keep)),
        )

    return HistorySplit("random", part(train_ids), part(val_ids),
                        f"random split: {len(val_ids)} of {len(ids)} accounts ({holdout:.0%}) held out, "
                        f"stratified on churn, seed {seed}")


def split_history(frames: HistoryFrames, split: str = "auto", holdout: float = DEFAULT_HOLDOUT,
                  seed: int = DEFAULT_SEED, min_churn_events: int = MIN_CHURN_EVENTS) -> HistorySplit:
    """Train / validation parts of `frames` (module docstring); refuses what cannot be validated."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be between 0 and 1 (exclusive), got {holdout}")
    dates = frames.as_of_dates
    if split == "time" and len(dates) < 2:
        raise InsufficientHistoryError(
            f"a time split needs at least two as_of snapshots; this history has one ({dates[0].date()}): "
            "use --split random (a stratified holdout of accounts)")
    kind = split if split != "auto" else ("time" if len(dates) >= 2 else "random")
    result = _time_split(frames, holdout) if kind == "time" else _random_split(frames, holdout, seed)
    train_churn = int(result.train.accounts_history["churned"].sum())
    if train_churn < min_churn_events:
        raise InsufficientHistoryError(
            f"the training part ({result.description}) has {train_churn} churn events; calibration needs at "
            f"least {min_churn_events} (add older snapshots or more accounts)")
    val_y = result.validation.accounts_history["churned"]
    if val_y.sum() == 0 or val_y.sum() == len(val_y):
        which = "no churned account" if val_y.sum() == 0 else "no retained account"
        raise InsufficientHistoryError(
            f"the held-out part ({result.description}) has {which}; it cannot validate the calibration")
    return result
