"""Populate a state store through the StateStore API with a known portfolio, for report tests and the benchmark.

Accounts and opportunities come from the deterministic demo generator
(connectors.demo_data); scores are a seeded random walk over `runs` runs so the
trend, the history charts and the improving/declining counts have something to
show. Episodes, escalations, cursors, drift and a backtest are added so every
section of the report renders real rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
from sqlalchemy import insert, select

from healthsync.config.canonical import as_records
from healthsync.connectors.demo_data import generate_portfolio
from healthsync.sync.score_job import trend_text
from healthsync.sync.state import StateStore, dumps, open_store, utc_naive

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
BANDS = (("Red", 0, 40), ("Yellow", 41, 70), ("Green", 71, 100))
DIMENSIONS = ("product", "engagement", "support", "financial", "qualitative")


def band_of(scores: np.ndarray) -> np.ndarray:
    return np.select([scores >= 71, scores >= 41], ["Green", "Yellow"], "Red")


def _replica(store: StateStore, crm: str, obj: str, frame: pd.DataFrame, key: str, at: datetime) -> None:
    with store.begin() as conn:
        store.upsert_replica(conn, crm, obj, frame[key].astype(str).tolist(), [dumps(r) for r in as_records(frame)], at)
        store.set_cursor(conn, crm, obj, at)


def build_store(url: str, n_accounts: int = 200, runs: int = 6, seed: int = 3, now: datetime = NOW,
                names: dict[int, str] | None = None) -> StateStore:
    """A migrated store holding `runs` scored runs (one per day, the last at `now`) of `n_accounts` Salesforce accounts.

    `names` replaces the names of some accounts (by position), e.g. to test escaping.
    """
    store = open_store(url)
    portfolio = generate_portfolio(n_accounts, seed=seed, as_of=(now - timedelta(days=1)).date())
    accounts = portfolio.accounts.copy()
    for pos, name in (names or {}).items():
        accounts.loc[pos, "name"] = name
    # renewals spread over the next year so "upcoming renewals" has rows
    rng = np.random.default_rng(seed)
    accounts["renewal_date"] = pd.Timestamp(utc_naive(now)).normalize() + pd.to_timedelta(rng.integers(1, 365, n_accounts), unit="D")
    opps = portfolio.opportunities
    _replica(store, "salesforce", "accounts", accounts, "account_id", now - timedelta(hours=2))
    _replica(store, "salesforce", "opportunities", opps, "opportunity_id", now - timedelta(hours=2))

    # score history: a random walk per account
    base = rng.uniform(15, 95, n_accounts)
    steps = rng.normal(0, 6, (runs, n_accounts)).cumsum(axis=0)
    ids = accounts["account_id"].astype(str).to_numpy()
    insufficient = np.zeros(n_accounts, dtype=bool)
    insufficient[rng.choice(n_accounts, max(1, n_accounts // 50), replace=False)] = True
    for r in range(runs):
        at = now - timedelta(days=runs - 1 - r)
        scores = np.clip(np.round(base + steps[r], 1), 0, 100)
        bands = np.where(insufficient, "Insufficient data", band_of(scores))
        prev = np.clip(np.round(base + steps[r - 1], 1), 0, 100) if r else np.full(n_accounts, np.nan)
        delta = scores - prev
        momentum = pd.Series(np.select([delta > 5, delta < -5], ["up", "down"], "stable")).where(~np.isnan(delta), pd.NA)
        trend = trend_text(momentum, pd.Series(delta))
        dims = rng.uniform(0, 100, (n_accounts, len(DIMENSIONS))).round(1)
        store.add_score_history(
            [
                {
                    "run_id": f"run-{r:03d}",
                    "account_id": ids[i],
                    "scored_at": utc_naive(at),
                    "score": float(scores[i]),
                    "band": str(bands[i]),
                    "confidence": 0.9,
                    "dimension_json": dumps(dict(zip(DIMENSIONS, dims[i]))),
                    "drivers": f"Logins down to {i % 5 / 10:.1f}/user/week; {i % 3} escalations in 90 days",
                    "trend": trend[i],
                }
                for i in range(n_accounts)
            ]
        )
        store.start_run(f"run-{r:03d}", "sandbox", at - timedelta(minutes=5))
        store.finish_run(f"run-{r:03d}", "ok", {"run_id": f"run-{r:03d}", "drift_warnings": []}, 0, at)

    # the CRM confirmed an adjusted probability for every open opportunity: base x 0.8
    open_opps = opps[~opps["is_closed"].astype("boolean").fillna(False).astype(bool)]
    confirmed = {
        str(oid): {"Health_Adjusted_Probability__c": dumps(round(float(p) * 0.8, 4))}  # a 0-1 fraction, as sync.writeback writes it
        for oid, p in zip(open_opps["opportunity_id"], open_opps["probability"].fillna(0))
    }
    store.record_confirmed("salesforce", "opportunities", confirmed, f"run-{runs - 1:03d}", now)

    # playbook episodes: one breached, one due soon, one on time; one escalation
    first = ids[:3]
    due = [now - timedelta(hours=5), now + timedelta(hours=6), now + timedelta(days=5)]
    owner = accounts.set_index("account_id")["owner_email"]
    with store.begin() as conn:
        for i, (aid, d) in enumerate(zip(first, due)):
            conn.execute(
                insert(store.tables["episodes"]).values(
                    episode_id=f"hs1:salesforce:{aid}:at_risk_intervention:{i}", crm="salesforce", account_id=aid,
                    playbook="at_risk_intervention", status="open", opened_at=utc_naive(now - timedelta(days=1)),
                    task_key=f"key-{i}", task_id=f"00T{i:05d}", task_due_at=utc_naive(d), task_status="open",
                    owner_email=str(owner[aid]), segment="enterprise", last_seen_run=f"run-{runs - 1:03d}",
                )
            )
        conn.execute(
            insert(store.tables["escalations"]).values(
                episode_id=f"hs1:salesforce:{first[0]}:at_risk_intervention:0", level="manager", kind="escalation",
                recipient="manager@example.com", channel=None, ts="1700000000.000100", sent_at=utc_naive(now - timedelta(hours=4)),
            )
        )
        conn.execute(insert(store.tables["drift"]), [
            {"run_id": f"run-{runs - 1:03d}", "metric": "login_frequency", "psi": 0.31, "warning": True},
            {"run_id": f"run-{runs - 1:03d}", "metric": "feature_adoption", "psi": 0.02, "warning": False},
        ])
        conn.execute(insert(store.tables["backtests"]).values(
            run_id=None, created_at=utc_naive(now - timedelta(days=2)),
            report_json=dumps({"auc": 0.78, "pr_auc": 0.41, "brier": 0.09, "rows": 4000, "churned": 410,
                               "forecast": {"mape_before": 23.1, "mape_after": 14.2}, "by_period": [{"auc": 0.7}]}),
        ))
    return store


def expected_figures(store: StateStore, at_risk_bands: tuple[str, ...] = ("Red",)) -> tuple[dict[str, int], float, list[str]]:
    """Band counts, ARR at risk and the top-10 at-risk account ids, straight from the tables.

    Deliberately independent of sync.report_data: the latest run is the one with
    the newest score, ARR comes from the replica of every CRM.
    """
    sh = store.tables["score_history"]
    with store.engine.connect() as conn:
        latest = conn.execute(select(sh.c.run_id).order_by(sh.c.scored_at.desc(), sh.c.run_id.desc()).limit(1)).scalar()
        scored = conn.execute(select(sh.c.account_id, sh.c.band).where(sh.c.run_id == latest)).all()
    arr = {}
    for crm in ("salesforce", "hubspot"):
        arr.update({a["account_id"]: a.get("arr") for a in store.load_replica(crm, "accounts")})
    counts: dict[str, int] = {}
    for _aid, band in scored:
        counts[band] = counts.get(band, 0) + 1
    risky = sorted(((arr.get(aid) or 0.0, aid) for aid, band in scored if band in at_risk_bands), key=lambda t: (-t[0], t[1]))
    return counts, sum(a for a, _ in risky), [aid for _, aid in risky[:10]]
