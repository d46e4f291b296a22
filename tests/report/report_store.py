"""Populate a state store through the StateStore API with a known portfolio, for report tests and the benchmark.

Accounts, opportunities, tickets and owners come from the deterministic demo
generator (connectors.demo_data), split between Salesforce (even positions,
`sf:001...` ids) and HubSpot (odd positions, numeric ids), with each CRM's
instance recorded as sync/crm_directory.py records it. Scores are one run per
day for `days` days: a slow walk per account (the daily change of a score built
from 30- and 90-day windows is small) with a few sharp drops, so trends, band
changes and improving/declining counts have something to show. Episodes,
escalations, drift, a backtest and daily usage snapshots are added so every view
of the report renders real rows.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
from sqlalchemy import insert, select

from healthsync.config.canonical import as_records
from healthsync.connectors.demo_data import generate_portfolio
from healthsync.sync.score_job import trend_text
from healthsync.sync.state import StateStore, dumps, open_store, utc_naive

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
DIMENSIONS = ("product", "engagement", "support", "financial", "qualitative")
SF_INSTANCE = "https://acme.my.salesforce.com"
HS_PORTAL = 24681357
#: the shared generated portfolio of the tests: more accounts than the old 200-account drill-down cap, 40 daily runs
GENERATED_ACCOUNTS = 450
GENERATED_DAYS = 40


def band_of(scores: np.ndarray) -> np.ndarray:
    return np.select([scores >= 71, scores >= 41], ["Green", "Yellow"], "Red")


def sf_id(prefix: str, n: int) -> str:
    return f"{prefix}Hs{n:010d}AAA"  # 18 characters, like a Salesforce id with its key prefix


def _store_replica(store: StateStore, crm: str, obj: str, frame: pd.DataFrame, key: str, at: datetime) -> None:
    with store.begin() as conn:
        store.upsert_replica(conn, crm, obj, frame[key].astype(str).tolist(), [dumps(r) for r in as_records(frame)], at)
        store.set_cursor(conn, crm, obj, at)


def build_store(url: str, n_accounts: int = 200, days: int = 6, seed: int = 3, now: datetime = NOW,
                names: dict[int, str] | None = None, usage: bool = True) -> StateStore:
    """A migrated store holding `days` daily scored runs (the last at `now`) of `n_accounts` accounts in two CRMs."""
    store = open_store(url)
    portfolio = generate_portfolio(n_accounts, seed=seed, as_of=(now - timedelta(days=1)).date())
    accounts = portfolio.accounts.copy()
    for pos, name in (names or {}).items():
        accounts.loc[pos, "name"] = name
    rng = np.random.default_rng(seed)
    # renewals spread over the next year so "upcoming renewals" and the renewal forecast have rows
    accounts["renewal_date"] = pd.Timestamp(utc_naive(now)).normalize() + pd.to_timedelta(rng.integers(1, 365, n_accounts), unit="D")
    hubspot = np.arange(n_accounts) % 2 == 1
    new_ids = np.where(hubspot, [f"hs:{4_000_000_001 + i}" for i in range(n_accounts)],
                       [f"sf:{sf_id('001', i)}" for i in range(n_accounts)])
    id_map = dict(zip(accounts["account_id"], new_ids))
    accounts["account_id"] = new_ids
    opps = portfolio.opportunities.copy()
    opps["account_id"] = opps["account_id"].map(id_map)
    opp_hs = opps["account_id"].str.startswith("hs:").to_numpy()
    opps["opportunity_id"] = np.where(opp_hs, [f"hs:{8_000_000_001 + j}" for j in range(len(opps))],
                                      [f"sf:{sf_id('006', j)}" for j in range(len(opps))])
    tickets = portfolio.tickets.copy()
    tickets["account_id"] = tickets["account_id"].map(id_map)
    tickets["ticket_id"] = [f"{'hs' if a.startswith('hs:') else 'sf'}:{t}" for a, t in zip(tickets["account_id"], tickets["ticket_id"])]
    pulled = now - timedelta(hours=2)
    for crm, prefix in (("salesforce", "sf:"), ("hubspot", "hs:")):
        _store_replica(store, crm, "accounts", accounts[accounts["account_id"].str.startswith(prefix)], "account_id", pulled)
        _store_replica(store, crm, "opportunities", opps[opps["account_id"].str.startswith(prefix)], "opportunity_id", pulled)
        _store_replica(store, crm, "tickets", tickets[tickets["account_id"].str.startswith(prefix)], "ticket_id", pulled)
        owners = portfolio.owners[["email", "name"]].assign(owner_id=[f"{prefix}owner{i}" for i in range(len(portfolio.owners))])
        _store_replica(store, crm, "owners", owners, "owner_id", pulled)
    store.set_crm_instance("salesforce", {"instance_url": SF_INSTANCE}, pulled)
    store.set_crm_instance("hubspot", {"portal_id": HS_PORTAL, "ui_domain": "app.hubspot.com"}, pulled)

    # one run per day: a slow walk per account, with a sharp drop now and then
    ids = accounts["account_id"].astype(str).to_numpy()
    base = rng.uniform(15, 95, n_accounts)
    steps = rng.normal(0, 1.2, (days, n_accounts)) + np.where(rng.random((days, n_accounts)) < 0.01, -12.0, 0.0)
    walk = np.clip(base + steps.cumsum(axis=0), 0, 100)
    insufficient = np.zeros(n_accounts, dtype=bool)
    insufficient[rng.choice(n_accounts, max(1, n_accounts // 50), replace=False)] = True
    for r in range(days):
        at = now - timedelta(days=days - 1 - r)
        run_id = f"run-{r:04d}"
        scores = np.round(walk[r], 1)
        bands = np.where(insufficient, "Insufficient data", band_of(scores))
        month_ago = np.round(walk[max(0, r - 30)], 1)
        delta = scores - month_ago if r >= 30 else np.full(n_accounts, np.nan)
        momentum = pd.Series(np.select([delta > 5, delta < -5], ["up", "down"], "stable")).where(~np.isnan(delta), pd.NA)
        trend = trend_text(momentum, pd.Series(delta))
        dims = rng.uniform(0, 100, (n_accounts, len(DIMENSIONS))).round(1)
        store.add_score_history([
            {
                "run_id": run_id,
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
        ])
        store.start_run(run_id, "sandbox", at - timedelta(minutes=5))
        store.finish_run(run_id, "ok", {"run_id": run_id, "drift_warnings": []}, 0, at)
        if usage:
            growth = 1 - 0.004 * (days - 1 - r)  # users grow towards today's figure, which the replica holds
            store.record_usage([
                {"account_id": ids[i], "active_users": float(round(u * growth)), "seats_purchased": float(s),
                 "logins_per_user_week": float(lg), "features_used": float(f), "features_available": float(fa)}
                for i, (u, s, lg, f, fa) in enumerate(zip(accounts["active_users_30d"], accounts["seats_purchased"],
                                                          accounts["logins_per_user_week"], accounts["features_used"],
                                                          accounts["features_available"]))
            ], pd.Timestamp(utc_naive(at)).date(), run_id)
    last_run = f"run-{days - 1:04d}"

    # the CRMs confirmed an adjusted probability for every open opportunity: base x 0.8
    open_opps = opps[~opps["is_closed"].astype("boolean").fillna(False).astype(bool)]
    for crm, prefix, field in (("salesforce", "sf:", "Health_Adjusted_Probability__c"), ("hubspot", "hs:", "health_adjusted_probability")):
        mine = open_opps[open_opps["opportunity_id"].str.startswith(prefix)]
        confirmed = {str(oid): {field: dumps(round(float(p) * 0.8, 4))} for oid, p in zip(mine["opportunity_id"], mine["probability"].fillna(0))}
        store.record_confirmed(crm, "opportunities", confirmed, last_run, now)

    # playbook episodes: one breached, one due soon, one on time in each CRM; one escalation
    owner = accounts.set_index("account_id")["owner_email"]
    due = [now - timedelta(hours=5), now + timedelta(hours=6), now + timedelta(days=5)]
    with store.begin() as conn:
        for k, aid in enumerate(ids[:6]):
            crm = "hubspot" if aid.startswith("hs:") else "salesforce"
            task_id = str(6_000_000_001 + k) if crm == "hubspot" else sf_id("00T", k)
            conn.execute(insert(store.tables["episodes"]).values(
                episode_id=f"at_risk_intervention:{aid}:{k}", crm=crm, account_id=aid, playbook="at_risk_intervention",
                status="open", opened_at=utc_naive(now - timedelta(days=1)), task_key=f"key-{k}", task_id=task_id,
                task_due_at=utc_naive(due[k % 3]), task_status="open", owner_email=str(owner[aid]), segment="enterprise",
                last_seen_run=last_run))
        conn.execute(insert(store.tables["escalations"]).values(
            episode_id=f"at_risk_intervention:{ids[0]}:0", level="manager", kind="escalation", recipient="manager@example.com",
            channel=None, ts="1700000000.000100", sent_at=utc_naive(now - timedelta(hours=4))))
        conn.execute(insert(store.tables["drift"]), [
            {"run_id": last_run, "metric": "login_frequency", "psi": 0.31, "warning": True},
            {"run_id": last_run, "metric": "feature_adoption", "psi": 0.02, "warning": False},
        ])
        conn.execute(insert(store.tables["backtests"]).values(
            run_id=None, created_at=utc_naive(now - timedelta(days=2)),
            report_json=dumps({"auc": 0.78, "pr_auc": 0.41, "brier": 0.09, "rows": 4000, "churned": 410,
                               "forecast": {"mape_before": 23.1, "mape_after": 14.2}, "by_period": [{"auc": 0.7}]}),
        ))
    return store


def latest_accounts(store: StateStore) -> pd.DataFrame:
    """The latest run's accounts joined to the replica, straight from the tables (independent of sync.report).

    Columns: account_id, crm, band, score, arr, segment, owner_email, renewal_date.
    """
    sh = store.tables["score_history"]
    with store.engine.connect() as conn:
        latest = conn.execute(select(sh.c.run_id).order_by(sh.c.scored_at.desc(), sh.c.run_id.desc()).limit(1)).scalar()
        scored = conn.execute(select(sh.c.account_id, sh.c.band, sh.c.score).where(sh.c.run_id == latest)).all()
    rows = {}
    for crm in ("salesforce", "hubspot"):
        for a in store.load_replica(crm, "accounts"):
            rows[a["account_id"]] = {**a, "crm": crm}
    out = []
    for aid, band, score in scored:
        a = rows.get(aid, {})
        out.append({"account_id": aid, "crm": a.get("crm"), "band": band, "score": score, "arr": a.get("arr") or 0.0,
                    "segment": a.get("segment"), "owner_email": a.get("owner_email"), "name": a.get("name"),
                    "renewal_date": a.get("renewal_date")})
    return pd.DataFrame(out)


def expected_figures(store: StateStore, at_risk_bands: tuple[str, ...] = ("Red",), **where) -> tuple[dict[str, int], float, list[str]]:
    """Band counts, ARR at risk and the top-10 at-risk account ids of the accounts matching `where` (column=value)."""
    frame = latest_accounts(store)
    for column, value in where.items():
        frame = frame[frame[column] == value]
    counts = {str(k): int(v) for k, v in frame["band"].value_counts().items()}
    risky = frame[frame["band"].isin(at_risk_bands)]
    top = sorted(zip(risky["arr"], risky["account_id"]), key=lambda t: (-t[0], t[1]))[:10]
    return counts, float(risky["arr"].sum()), [aid for _, aid in top]


def json_records(store: StateStore, crm: str, obj: str) -> list[dict]:
    return [json.loads(dumps(r)) for r in store.load_replica(crm, obj)]
