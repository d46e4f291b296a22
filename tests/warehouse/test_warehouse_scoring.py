"""Warehouse usage in the score: absent is not zero, and a CRM-only setup keeps the seed-003 model."""

from __future__ import annotations

from datetime import timezone

import numpy as np
import pandas as pd
import pytest

from warehouse_db import END, ago, load_warehouse
from healthsync.config.settings import WarehouseSource, load_settings
from healthsync.connectors.demo_data import generate_portfolio
from healthsync.engine.pipeline import score_portfolio
from healthsync.sync.warehouse_job import WarehouseUsage, match_accounts
from healthsync.connectors.warehouse import WarehouseConnector
from healthsync.engine.usage import derive_usage

#: seed 003_cec208348d92c0f6.txt's measure table, the default model before the warehouse metrics
SEED_003 = {"login_frequency": 0.15, "feature_adoption": 0.15, "license_utilization": 0.10, "qbr_attendance": 0.10,
            "email_response": 0.08, "exec_sponsor": 0.07, "ticket_trend": 0.10, "escalations": 0.05,
            "payment_timeliness": 0.10, "csm_sentiment": 0.10}
USAGE_METRICS = ("login_frequency", "feature_adoption", "license_utilization", "session_trend", "product_engagement")


def _accounts() -> pd.DataFrame:
    base = {"segment": "mid_market", "arr": 50_000.0, "seats_purchased": 10, "features_available": 20, "qbrs_missed": 0,
            "email_response_hours": 10.0, "exec_sponsor": "active", "days_payment_late": 0, "csm_sentiment": "green"}
    rows = []
    for i, key in enumerate(["p1", "p2", "p3"]):
        # the CRM's own usage fields say something else: the warehouse must win, even by saying "unknown"
        rows.append({"account_id": f"sf:{i}", "crm": "salesforce", "product_account_id": key, **base,
                     "active_users_30d": 9, "logins_per_user_week": 6.0, "features_used": 18})
    return pd.DataFrame(rows)


def test_given_an_account_without_usage_in_the_window_then_its_usage_metrics_are_absent_not_zero(duckdb_url):
    load_warehouse(duckdb_url, [
        {"account_key": "p1", "occurred_at": ago(2), "user_id": "u1", "feature": "login", "value": 1.0},
        {"account_key": "p1", "occurred_at": ago(3), "user_id": "u2", "feature": "reports", "value": 1.0},
        {"account_key": "p2", "occurred_at": ago(50), "user_id": "u3", "feature": "login", "value": 1.0},
        {"account_key": "p3", "occurred_at": ago(200), "user_id": "u4", "feature": "login", "value": 1.0},
    ])
    config = WarehouseSource.model_validate({"url": duckdb_url, "events": {"table": "usage_events", "user_id": "user_id",
                                                                            "feature": "feature", "value": "value"}})
    settings = load_settings()
    connector = WarehouseConnector(config)
    usage = WarehouseUsage(config=config, pull=connector.pull(END.replace(tzinfo=timezone.utc)))
    connector.close()
    usage.usage = derive_usage(usage.pull.features, pd.Timestamp(END))
    accounts = _accounts()
    matched = match_accounts(accounts, usage, settings)
    result = score_portfolio(accounts.drop(columns=["crm"]), None, None, settings.model, as_of=END,
                             account_usage=matched)
    scores = result.scores.set_index("account_id")
    features = result.features.set_index("account_id")
    weights = {m.name: m.weight for m in settings.model.metrics}

    # p3 had nothing in the window: no value at all, not the CRM's 9 users, not zero
    assert np.isnan(features.loc["sf:2", "active_users_30d"]) and np.isnan(features.loc["sf:2", "logins_per_user_week"])
    for metric in USAGE_METRICS:
        assert np.isnan(scores.loc["sf:2", f"m_{metric}"]), metric
    # weight present: everything but the usage metrics and the ticket metrics (no tickets given); with no
    # touchpoints table the MTA metric is out of the model and its weight went to its pillar (engagement)
    present = 1.0 - sum(weights[m] for m in USAGE_METRICS) - weights["ticket_trend"] - weights["escalations"]
    assert scores.loc["sf:2", "confidence"] == pytest.approx(present, abs=1e-4)
    assert scores.loc["sf:0", "confidence"] == pytest.approx(present + sum(weights[m] for m in USAGE_METRICS), abs=1e-4)
    # every metric present is perfect: the score is 100, where zeros for the usage would have made it 60
    assert scores.loc["sf:2", "score"] == 100.0

    # p2 used the product 50 days ago and not since: a real zero for the last 30 days
    assert features.loc["sf:1", "active_users_30d"] == 0 and features.loc["sf:1", "logins_per_user_week"] == 0
    assert scores.loc["sf:1", "m_license_utilization"] == 0
    # p1: the warehouse's numbers replace the CRM's (2 users of 10 seats, 1 feature of 20)
    assert features.loc["sf:0", "active_users_30d"] == 2 and features.loc["sf:0", "features_used"] == 1
    assert scores.loc["sf:0", "m_license_utilization"] == pytest.approx(20.0)
    assert usage.match.key_match_rate == 1.0 and usage.match.accounts_without_usage == 1


def test_given_no_warehouse_then_the_default_model_scores_exactly_as_the_seed_003_measure_table():
    settings = load_settings()
    seed_model = settings.model.model_copy(deep=True)
    seed_model.metrics = [m.model_copy(update={"weight": SEED_003[m.name]}) for m in seed_model.metrics if m.name in SEED_003]
    portfolio = generate_portfolio(400, seed=3)
    accounts = portfolio.accounts.drop(columns=["product_account_id"])
    ours = score_portfolio(accounts, portfolio.tickets, None, settings.model, as_of=portfolio.as_of).scores
    seed = score_portfolio(accounts, portfolio.tickets, None, seed_model, as_of=portfolio.as_of).scores
    assert len(settings.model.metrics) == 13 and abs(sum(m.weight for m in settings.model.metrics) - 1) < 1e-9
    np.testing.assert_allclose(ours["score"].to_numpy(float), seed["score"].to_numpy(float), atol=1e-9)
    np.testing.assert_allclose(ours["confidence"].to_numpy(float), seed["confidence"].to_numpy(float), atol=1e-9)
    assert (ours["band"].astype(str) == seed["band"].astype(str)).all()
    assert (ours["drivers"].astype(str) == seed["drivers"].astype(str)).all()
    # and the pillars keep the seed shares: product 40% (seed 002), engagement 25%
    by_dim = {}
    for metric in settings.model.metrics:
        by_dim[metric.dimension] = by_dim.get(metric.dimension, 0) + metric.weight
    assert by_dim["product"] == pytest.approx(0.40) and by_dim["engagement"] == pytest.approx(0.25)


def test_given_keys_in_both_crms_and_twice_in_one_then_matching_counts_them_apart():
    settings = load_settings()
    config = WarehouseSource.model_validate({"url": "duckdb:///unused.duckdb", "events": {"table": "usage_events"}})
    usage = WarehouseUsage(config=config, usage=pd.DataFrame({
        "account_key": [" p1", "p2", "p9"], "events_window": [3.0, 5.0, 7.0], "active_users_30d": [1.0, 2.0, 4.0]}))
    accounts = pd.DataFrame({
        "account_id": ["sf:1", "hs:1", "sf:2", "sf:3", "sf:4"],
        "crm": ["salesforce", "hubspot", "salesforce", "salesforce", "salesforce"],
        "product_account_id": ["p1", "p1 ", "p2", "p2", None],
    })
    matched = match_accounts(accounts, usage, settings).set_index("account_id")
    # the same customer in Salesforce and HubSpot: both get its usage; sf:4 has no key: no row
    assert matched["active_users_30d"].to_dict() == {"sf:1": 1.0, "hs:1": 1.0, "sf:2": 2.0, "sf:3": 2.0}
    m = usage.match
    assert (m.keys, m.keys_matched, m.accounts_with_usage, m.accounts_without_usage, m.shared_keys) == (3, 2, 4, 1, 1)
    assert m.key_match_rate == pytest.approx(2 / 3)
