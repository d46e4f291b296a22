"""Score job: both CRMs in one frame from the replica, previous scores and trend text from history."""

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from healthsync.config.canonical import as_records
from healthsync.config.settings import load_settings
from healthsync.connectors.demo_data import generate_portfolio
from healthsync.sync.score_job import record_history, score_replica, trend_text
from healthsync.sync.state import dumps, open_store

NOW = datetime(2026, 3, 2, 6, 0, tzinfo=timezone.utc)


def _store_portfolio(store, crm: str, prefix: str, portfolio) -> None:
    for object, frame in (("accounts", portfolio.accounts), ("opportunities", portfolio.opportunities), ("tickets", portfolio.tickets)):
        frame = frame.copy()
        for col in ("account_id", "opportunity_id", "ticket_id"):
            if col in frame.columns:
                frame[col] = prefix + frame[col].astype(str)
        key = {"accounts": "account_id", "opportunities": "opportunity_id", "tickets": "ticket_id"}[object]
        with store.begin() as conn:
            store.upsert_replica(conn, crm, object, frame[key].tolist(), [dumps(r) for r in as_records(frame)], NOW)


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    p = generate_portfolio(30, seed=3, as_of=NOW.date())
    _store_portfolio(s, "salesforce", "sf:", p)
    _store_portfolio(s, "hubspot", "hs:", p)
    yield s
    s.close()


def test_given_two_crms_when_scored_then_one_frame_with_prefixed_ids_and_crm_column(store):
    settings = load_settings()
    result = score_replica(store, settings, ["salesforce", "hubspot"], NOW)
    scores = result.scores
    assert len(scores) == 60 and scores["account_id"].is_unique
    assert scores.groupby("crm").size().to_dict() == {"hubspot": 30, "salesforce": 30}
    assert scores["account_id"].str.startswith(("sf:", "hs:")).all()
    # same source data in both CRMs -> same scores
    sf = scores[scores.crm == "salesforce"].assign(k=lambda f: f.account_id.str[3:]).set_index("k")["score"]
    hs = scores[scores.crm == "hubspot"].assign(k=lambda f: f.account_id.str[3:]).set_index("k")["score"]
    pd.testing.assert_series_equal(sf.sort_index(), hs.sort_index(), check_names=False)
    for column in ("name", "segment", "arr", "renewal_date", "owner_email", "score", "band", "raw_band", "confidence",
                   "delta_30d", "delta_90d", "momentum", "drivers", "previous_score", "previous_band"):
        assert column in scores.columns, column
    assert scores["previous_score"].isna().all()
    assert (scores["trend"] == "new (no 30d history)").all()
    assert not result.opportunities["is_closed"].astype(bool).any()
    assert set(result.opportunities["crm"]) == {"salesforce", "hubspot"}


def test_given_history_then_previous_score_and_30_day_trend_come_from_it(store):
    settings = load_settings()
    first = score_replica(store, settings, ["salesforce", "hubspot"], NOW - timedelta(days=31))
    # make the old scores 12 points higher, so today's trend reads "down -12.0 (30d)"
    rows = first.scores.copy()
    rows["score"] = rows["score"] + 12
    assert record_history(store, settings, rows, "old-run", NOW - timedelta(days=31)) == 60
    result = score_replica(store, settings, ["salesforce", "hubspot"], NOW)
    s = result.scores.set_index("account_id")
    old = rows.set_index("account_id")
    same_day_data = (s["score"] - (old["score"] - 12)).abs() < 1e-9  # the tickets window moved for some accounts
    assert same_day_data.sum() > 0
    assert (s.loc[same_day_data, "trend"] == "down -12.0 (30d)").all()
    pd.testing.assert_series_equal(s["previous_score"], old["score"].reindex(s.index), check_names=False)
    assert (s["previous_band"] == old["band"].reindex(s.index)).all()


def test_trend_text_formats_momentum_and_delta():
    out = trend_text(pd.Series(["down", "up", "stable", pd.NA]), pd.Series([-12.04, 7.0, 0.0, float("nan")]))
    assert out.tolist() == ["down -12.0 (30d)", "up +7.0 (30d)", "stable +0.0 (30d)", "new (no 30d history)"]
    assert max(len(t) for t in out) <= 40  # Salesforce Health_Trend__c is Text(40)
