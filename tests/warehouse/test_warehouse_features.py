"""The warehouse features, computed inside DuckDB and PostgreSQL, against a hand calculation."""

from __future__ import annotations

import math
import random
from datetime import timezone

import numpy as np
import pandas as pd
import pytest

from warehouse_db import END, ago, load_warehouse
from healthsync.config.settings import WarehouseSource
from healthsync.connectors.warehouse import WarehouseConnector
from healthsync.engine.usage import derive_usage

AS_OF = END.replace(tzinfo=timezone.utc)

EVENTS = [
    # p1: two users active in the last 30 days, one earlier login, two features recently, one earlier
    {"account_key": "p1", "occurred_at": ago(1), "user_id": "u1", "feature": "login", "value": 1.0},
    {"account_key": "p1", "occurred_at": ago(2), "user_id": "u2", "feature": "login", "value": 1.0},
    {"account_key": "p1", "occurred_at": ago(40), "user_id": "u1", "feature": "login", "value": 1.0},
    {"account_key": "p1", "occurred_at": ago(3), "user_id": "u1", "feature": "reports", "value": 3.0},
    {"account_key": "p1", "occurred_at": ago(10), "user_id": "u2", "feature": "export", "value": 1.0},
    {"account_key": "p1", "occurred_at": ago(50), "user_id": "u2", "feature": "reports", "value": 1.0},
    {"account_key": "p1", "occurred_at": ago(100), "user_id": "u9", "feature": "login", "value": 1.0},  # outside 90 days
    # p2: used the product 31-90 days ago, nothing since
    {"account_key": "p2", "occurred_at": ago(45), "user_id": "u3", "feature": "login", "value": 1.0},
    {"account_key": "p2", "occurred_at": ago(60), "user_id": "u3", "feature": "x", "value": 1.0},
    # p3: only history older than the window: no usage in the window at all
    {"account_key": "p3", "occurred_at": ago(120), "user_id": "u4", "feature": "login", "value": 1.0},
    {"account_key": "p3", "occurred_at": ago(400), "user_id": "u4", "feature": "login", "value": 1.0},
    # a row without an account key (counted as an error, never attributed)
    {"account_key": None, "occurred_at": ago(5), "user_id": "u5", "feature": "login", "value": 1.0},
    # in the future of the run: not part of the window
    {"account_key": "p1", "occurred_at": ago(-1), "user_id": "u7", "feature": "login", "value": 1.0},
]
TOUCHPOINTS = [
    {"account_key": "p1", "touched_at": ago(80), "channel": "email"},
    {"account_key": "p1", "touched_at": ago(20), "channel": "webinar"},
    {"account_key": "p1", "touched_at": ago(5), "channel": "call"},
    {"account_key": "p2", "touched_at": ago(10), "channel": "email"},
    {"account_key": "p3", "touched_at": ago(95), "channel": "email"},  # outside the 90-day lookback
]


def config(url: str, **over) -> WarehouseSource:
    return WarehouseSource.model_validate({
        "url": url,
        "events": {"table": "usage_events", "user_id": "user_id", "feature": "feature", "value": "value"},
        "touchpoints": {"table": "touchpoints", "channel": "channel"},
        **over,
    })


def pull(url: str, **over) -> pd.DataFrame:
    connector = WarehouseConnector(config(url, **over))
    try:
        result = connector.pull(AS_OF)
    finally:
        connector.close()
    return result, derive_usage(result.features, pd.Timestamp(END)).set_index("account_key").sort_index()


def hand() -> dict:
    """The expected values, worked out from EVENTS / TOUCHPOINTS by hand."""
    e = math.exp
    decay_p1 = e(-0.05 * 1) + e(-0.05 * 2) + e(-0.05 * 40) + 3 * e(-0.05 * 3) + e(-0.05 * 10) + e(-0.05 * 50)
    decay_p2 = e(-0.05 * 45) + e(-0.05 * 60)
    d = [e(-0.1 * 80), e(-0.1 * 20), e(-0.1 * 5)]  # p1's touches, oldest first
    return {
        "p1": {
            "active_users_30d": 2, "sessions_30d": 2, "sessions_90d": 3, "features_used": 2,
            "logins_per_user_week": 2 / 2 / (30 / 7), "session_rate_30d": 2 / 30, "session_rate_90d": 3 / 90,
            "session_trend": (2 / 30) / (3 / 90), "decay_engagement": decay_p1, "events_window": 6,
            "mta_first": d[0], "mta_last": d[2], "mta_linear": sum(d) / 3,
            "mta_time_decay": sum(x * x for x in d) / sum(d),
            "mta_position_based": 0.4 * d[0] + 0.2 * d[1] + 0.4 * d[2],
        },
        "p2": {
            "active_users_30d": 0, "sessions_30d": 0, "sessions_90d": 1, "features_used": 0,
            "logins_per_user_week": 0.0, "session_rate_30d": 0.0, "session_rate_90d": 1 / 90, "session_trend": 0.0,
            "decay_engagement": decay_p2, "events_window": 2,
            **{f"mta_{m}": e(-0.1 * 10) for m in ("first", "last", "linear", "time_decay", "position_based")},
        },
    }


def test_given_events_in_the_warehouse_when_pulled_then_each_feature_equals_the_hand_calculation(warehouse_url):
    load_warehouse(warehouse_url, EVENTS, TOUCHPOINTS)
    result, usage = pull(warehouse_url)
    expected = hand()
    assert sorted(usage.index) == ["p1", "p2"]  # p3 had nothing in the window: no row at all
    for key, values in expected.items():
        for column, value in values.items():
            assert usage.loc[key, column] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, column)
    assert usage.loc["p1", "mta_engagement"] == pytest.approx(expected["p1"]["mta_time_decay"], rel=1e-9)
    assert result.rows_in_window == 6 + 2 + 1  # p1, p2 and the row without a key; nothing older or later
    assert result.rows_without_key == 1
    assert result.freshness_hours == pytest.approx(24.0)  # the newest event in the window is a day old
    assert result.touchpoints_in_window == 4


def test_given_the_same_rows_in_duckdb_and_postgresql_then_the_same_expressions_give_the_same_features(
        duckdb_url, fresh_postgres_url):
    rng = random.Random(15)
    events = [
        {"account_key": f"a{rng.randrange(40)}", "occurred_at": ago(rng.uniform(0, 200)),
         "user_id": f"u{rng.randrange(25)}", "feature": rng.choice(["login", "login", "report", "export", "api", "admin"]),
         "value": float(rng.randrange(1, 5))}
        for _ in range(3000)
    ]
    touches = [{"account_key": f"a{rng.randrange(40)}", "touched_at": ago(rng.uniform(0, 120)),
                "channel": rng.choice(["email", "webinar", "call"])} for _ in range(400)]
    frames = []
    for url in (duckdb_url, fresh_postgres_url):
        load_warehouse(url, events, touches)
        frames.append(pull(url, touchpoints={"table": "touchpoints", "channel": "channel", "model": "position_based",
                                             "channel_weights": {"webinar": 2.0}})[1])
    duck, pg = frames
    assert list(duck.index) == list(pg.index) and len(duck) == 40
    assert list(duck.columns) == list(pg.columns)
    for column in duck.columns:
        if column == "last_event_at":
            assert (duck[column] == pg[column]).all()
        else:
            np.testing.assert_allclose(duck[column].to_numpy(float), pg[column].to_numpy(float), rtol=1e-9, err_msg=column)
    assert (duck["mta_engagement"] == duck["mta_position_based"]).all()
