"""History generators written for validating `calibrate` and `backtest` on mechanisms we did not score with.

Why a module of its own: the demo generator (`healthsync demo-data`) draws
deal wins as "stage probability x a health multiplier like the seed's", so a
forecast check on its history is circular. These four histories are made by
other mechanisms, each stated in its docstring in one line (the README's
validation table quotes them), and none imports the demo generator. All are
vectorised numpy, seeded, and written in the canonical history format
(design.md, "history for validation").

- `optimistic_step_history` (a): CRM probabilities 1/0.75 too optimistic; health
  acts as a step (deals of accounts in the weakest third lose 25 points of win
  probability), not as a multiplier.
- `health_blind_deals_history` (b): deal outcomes drawn from the CRM probability
  alone, independent of health; churn follows two latent factors.
- `rare_churn_monthly_history` (c): 10,000 accounts, twelve monthly snapshots,
  about 3% churn per month, driven by usage level and its month-on-month drop;
  churned accounts leave (with `churned_at`) and are replaced by new ones.
- `cross_sectional_history` (d): one snapshot of a telecom-like book with custom
  columns, `churned` written Yes/No in mixed case, and no tickets file; churn
  is logistic in log tenure, contract, support calls, charges and auto-pay.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DAY0 = pd.Timestamp("2024-01-01")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _ids(prefix: str, numbers: np.ndarray) -> np.ndarray:
    return np.char.add(prefix, np.char.zfill(numbers.astype(str), 6)).astype(object)


def _saas_accounts(rng, ids: np.ndarray, health: np.ndarray, as_of: pd.Timestamp, tenure_days: np.ndarray,
                   seats: np.ndarray, arr: np.ndarray, renewal_offset: np.ndarray) -> pd.DataFrame:
    """Canonical account columns driven by one latent health (each signal with its own noise)."""
    n = len(ids)
    noise = lambda scale=1.0: rng.normal(0.0, scale, n)  # noqa: E731
    utilisation = _sigmoid(0.6 + 0.9 * health + noise(0.6))
    late = rng.random(n) < _sigmoid(-2.0 - 0.9 * health)
    sentiment = 0.8 * health + noise(0.8)
    sponsor = health + noise(1.0)
    return pd.DataFrame({
        "account_id": ids,
        "segment": np.where(seats >= 120, "enterprise", np.where(seats >= 40, "mid_market", "smb")),
        "arr": arr,
        "seats_purchased": seats,
        "active_users_30d": rng.binomial(seats, utilisation),
        "logins_per_user_week": np.round(np.exp(0.7 + 0.6 * health + noise(0.5)), 2),
        "features_used": rng.binomial(30, _sigmoid(-0.3 + 0.5 * health + noise(0.5))),
        "features_available": 30,
        "qbrs_missed": np.minimum(rng.poisson(np.exp(-0.6 - 0.7 * health)), 4),
        "email_response_hours": np.round(np.exp(3.0 - 0.1 * health + noise(0.7)), 1),
        "exec_sponsor": np.where(sponsor > 0.5, "active", np.where(sponsor > -0.7, "partial", "none")),
        "days_payment_late": np.where(late, np.minimum(rng.exponential(25.0, n).astype(int) + 1, 120), 0),
        "csm_sentiment": np.where(sentiment > 0.4, "green", np.where(sentiment > -0.9, "yellow", "red")),
        "customer_since": (as_of - pd.to_timedelta(tenure_days, unit="D")).normalize(),
        "renewal_date": (as_of + pd.to_timedelta(renewal_offset, unit="D")).normalize(),
        "as_of": as_of,
    })


def _tickets(rng, ids: np.ndarray, health: np.ndarray, start: pd.Timestamp, days: int, first: int) -> pd.DataFrame:
    """Tickets created in (start, start + days]: Poisson per account, more and more escalated when unhealthy."""
    counts = rng.poisson(1.2 * np.exp(-0.45 * health))
    owner = np.repeat(np.arange(len(ids)), counts)
    m = len(owner)
    created = start + pd.to_timedelta(rng.uniform(0.01, days, m), unit="D")
    closed = rng.random(m) < 0.8
    return pd.DataFrame({
        "ticket_id": _ids("T", np.arange(first, first + m)),
        "account_id": ids[owner],
        "priority": rng.choice(["P1", "P2", "P3", "P4"], m, p=[0.08, 0.22, 0.4, 0.3]),
        "status": np.where(closed, "closed", "open"),
        "created_at": created,
        "closed_at": pd.Series(created + pd.to_timedelta(rng.uniform(0.1, 5.0, m), unit="D")).where(closed),
        "escalated": rng.random(m) < _sigmoid(-2.6 - 0.7 * health[owner]),
    })


def _deals(rng, ids: np.ndarray, arr: np.ndarray, as_of: pd.Timestamp, period: int, share: float = 0.7):
    """One open deal for `share` of the accounts: CRM stage probability and amount (outcome added by the caller)."""
    has = rng.random(len(ids)) < share
    idx = np.flatnonzero(has)
    m = len(idx)
    base = rng.choice([0.1, 0.2, 0.4, 0.6, 0.8, 0.9], m, p=[0.15, 0.2, 0.25, 0.2, 0.12, 0.08])
    return idx, pd.DataFrame({
        "opportunity_id": _ids(f"O{period}-", np.arange(m)),
        "account_id": ids[idx],
        "stage": np.array(["Prospecting", "Qualification", "Proposal", "Negotiation", "Commit", "Verbal"],
                          dtype=object)[np.searchsorted([0.1, 0.2, 0.4, 0.6, 0.8, 0.9], base)],
        "amount": np.round(arr[idx] * rng.uniform(0.2, 1.2, m), 0),
        "probability": base,
        "close_date": (as_of + pd.Timedelta(days=60)).normalize(),
        "type": rng.choice(["renewal", "expansion", "new_business"], m, p=[0.5, 0.35, 0.15]),
        "is_closed": False,
        "as_of": as_of,
    })


def _quarterly_book(n: int, snapshots: int, seed: int, deal_outcome) -> dict[str, pd.DataFrame]:
    """A quarterly SaaS book (a, b): AR(1) latent health, churners leave and are replaced; deals by `deal_outcome`."""
    rng = np.random.default_rng(seed)
    ids = _ids("A", np.arange(n))
    next_id = n
    health = rng.standard_normal(n)
    tenure = rng.integers(30, 2000, n)
    seats = rng.integers(5, 250, n)
    arr = np.round(seats * rng.uniform(300, 900, n), 0)
    renewal = rng.integers(5, 365, n)
    accounts, tickets, deals = [], [], []
    ticket_no = 0
    for t in range(snapshots):
        as_of = DAY0 + pd.Timedelta(days=90 * t)
        frame = _saas_accounts(rng, ids, health, as_of, tenure, seats, arr, renewal)
        churn = rng.random(n) < _sigmoid(-2.3 - 1.4 * health)
        frame["churned"] = churn.astype(int)
        accounts.append(frame)
        tk = _tickets(rng, ids, health, as_of - pd.Timedelta(days=90), 90, ticket_no)
        ticket_no += len(tk)
        tickets.append(tk)
        idx, opp = _deals(rng, ids, arr, as_of, t)
        won = rng.random(len(idx)) < deal_outcome(opp["probability"].to_numpy(), health[idx])
        opp["won"] = won.astype(int)
        opp["won_amount"] = np.where(won, opp["amount"], 0.0)
        deals.append(opp)
        # next quarter: churners replaced by new accounts, everyone's health moves (AR(1))
        k = int(churn.sum())
        ids = ids.copy()
        ids[churn] = _ids("A", np.arange(next_id, next_id + k))
        next_id += k
        health = 0.85 * health + 0.53 * rng.standard_normal(n)
        health[churn] = rng.standard_normal(k)
        tenure = tenure + 90
        tenure[churn] = rng.integers(1, 90, k)
        seats[churn] = rng.integers(5, 250, k)
        arr[churn] = np.round(seats[churn] * rng.uniform(300, 900, k), 0)
        renewal = (renewal - 90) % 365 + 1
    return {"accounts_history": pd.concat(accounts, ignore_index=True),
            "tickets": pd.concat(tickets, ignore_index=True),
            "opportunities_history": pd.concat(deals, ignore_index=True)}


#: (a) the CRM's probabilities are optimistic by this factor ...
OPTIMISM = 0.75
#: ... and deals of accounts whose latent health is below this (the weakest ~third) lose STEP of win probability
STEP_BELOW, STEP = -0.45, 0.25


def optimistic_step_history(n: int = 4000, snapshots: int = 4, seed: int = 11) -> dict[str, pd.DataFrame]:
    """(a) P(win) = 0.75 x CRM probability, minus 0.25 when the account's latent health is in its weakest third."""
    def outcome(base, health):
        return np.clip(OPTIMISM * base - STEP * (health < STEP_BELOW), 0.01, 0.99)

    return _quarterly_book(n, snapshots, seed, outcome)


def health_blind_deals_history(n: int = 4000, snapshots: int = 4, seed: int = 12) -> dict[str, pd.DataFrame]:
    """(b) P(win) = the CRM probability, whatever the account's health."""
    return _quarterly_book(n, snapshots, seed, lambda base, health: base)


def rare_churn_monthly_history(n: int = 10_000, months: int = 12, seed: int = 13) -> dict[str, pd.DataFrame]:
    """(c) ~3% monthly churn from usage level and its month-on-month drop; leavers carry churned_at."""
    rng = np.random.default_rng(seed)
    ids = _ids("M", np.arange(n))
    next_id = n
    usage = rng.standard_normal(n)
    prev = usage.copy()
    tenure = rng.integers(30, 1500, n)
    seats = rng.integers(5, 200, n)
    arr = np.round(seats * rng.uniform(200, 700, n), 0)
    renewal = rng.integers(5, 365, n)
    frames = []
    for t in range(months):
        as_of = DAY0 + pd.Timedelta(days=30 * t)
        drop = prev - usage
        risk = -3.95 - 0.9 * usage + 1.2 * drop
        churn = rng.random(n) < _sigmoid(risk)
        frame = _saas_accounts(rng, ids, 0.7 * usage - 0.6 * drop, as_of, tenure, seats, arr, renewal)
        frame["churned"] = churn.astype(int)
        frame["churned_at"] = (as_of + pd.to_timedelta(rng.integers(1, 30, n), unit="D")).where(churn)
        frames.append(frame)
        k = int(churn.sum())
        ids = ids.copy()
        ids[churn] = _ids("M", np.arange(next_id, next_id + k))
        next_id += k
        prev = usage.copy()
        usage = 0.9 * usage + 0.44 * rng.standard_normal(n)
        usage[churn] = rng.standard_normal(k)
        prev[churn] = usage[churn]
        tenure = tenure + 30
        tenure[churn] = rng.integers(1, 30, k)
        renewal = (renewal - 30) % 365 + 1
    return {"accounts_history": pd.concat(frames, ignore_index=True)}


#: (d)'s custom-metrics config: telecom-like columns. `tenure` is configured the wrong way round on purpose
#: (long tenure scored as unhealthy), so calibrate has a direction to learn.
CROSS_SECTIONAL_CONFIG = {
    "model": {
        "metrics": [
            {"name": "tenure", "label": "Tenure", "dimension": "relationship", "weight": 0.2,
             "rule": {"type": "linear", "column": "tenure_months", "zero_at": 72, "full_at": 0}},
            {"name": "contract", "label": "Contract", "dimension": "relationship", "weight": 0.3,
             "rule": {"type": "category", "column": "contract",
                      "points": {"two_year": 100, "one_year": 60, "month_to_month": 0}}},
            {"name": "support_calls", "label": "Support calls", "dimension": "support", "weight": 0.2,
             "rule": {"type": "steps", "column": "support_calls",
                      "steps": [{"min": 4, "points": 0}, {"min": 2, "points": 50}], "else_points": 100}},
            {"name": "monthly_charges", "label": "Monthly charges", "dimension": "financial", "weight": 0.15,
             "rule": {"type": "linear", "column": "monthly_charges", "zero_at": 120, "full_at": 20}},
            {"name": "auto_pay", "label": "Auto-pay", "dimension": "financial", "weight": 0.15,
             "rule": {"type": "boolean", "column": "auto_pay", "true_points": 100, "false_points": 40}},
        ],
    },
}


def cross_sectional_history(n: int = 4000, seed: int = 14) -> dict[str, pd.DataFrame]:
    """(d) one snapshot; churn logistic in log tenure, contract, support calls, charges, auto-pay; Yes/No labels."""
    rng = np.random.default_rng(seed)
    contract = rng.choice(["month_to_month", "one_year", "two_year"], n, p=[0.5, 0.25, 0.25])
    tenure = np.clip(rng.gamma(1.3, 22.0, n).astype(int), 0, 72)
    calls = rng.poisson(np.exp(0.2 + 0.5 * (contract == "month_to_month")), n)
    charges = np.round(rng.uniform(18, 118, n), 2)
    auto_pay = rng.random(n) < 0.45
    risk = (-0.5 - 0.55 * np.log1p(tenure) + 1.3 * (contract == "month_to_month") - 0.8 * (contract == "two_year")
            + 0.45 * np.log1p(calls) * 2 + 0.012 * (charges - 65) - 0.5 * auto_pay)
    churn = rng.random(n) < _sigmoid(risk)
    spellings = np.where(churn, rng.choice(["Yes", "yes", "YES", "y"], n), rng.choice(["No", "no", "NO", "n"], n))
    accounts = pd.DataFrame({
        "account_id": _ids("C", np.arange(n)),
        "as_of": pd.Timestamp("2025-06-30"),
        "tenure_months": tenure,
        "contract": contract,
        "support_calls": calls,
        "monthly_charges": charges,
        "auto_pay": np.where(auto_pay, "yes", "no"),
        "churned": spellings,
    })
    return {"accounts_history": accounts}


def write(history: dict[str, pd.DataFrame], directory: Path) -> Path:
    """The history as the canonical CSV files `healthsync backtest --history DIR` reads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in history.items():
        frame.to_csv(directory / f"{name}.csv", index=False, date_format="%Y-%m-%dT%H:%M:%S")
    return directory
