"""Score history keeps the CSM override with each row, so the report can show when and why a CSM moved a band."""

import json
from datetime import datetime, timezone

import pandas as pd

from healthsync.config.settings import load_settings
from healthsync.sync.score_job import history_rows, usage_rows


def test_override_flag_reason_and_computed_band_are_kept_with_the_dimension_scores():
    settings = load_settings()
    scores = pd.DataFrame({
        "account_id": ["sf:1", "sf:2"], "score": [45.0, 80.0], "band": ["Red", "Green"], "confidence": [1.0, 1.0],
        "drivers": ["x", "y"], "trend": ["stable", "up"], "product_score": [40.0, 90.0],
        "override": [True, False], "override_reason": ["CSM sentiment red: one tier down", pd.NA], "raw_band": ["Yellow", "Green"],
    })
    rows = history_rows(scores, settings, "run-1", datetime(2026, 11, 1, tzinfo=timezone.utc))
    first, second = (json.loads(r["dimension_json"]) for r in rows)
    assert first == {"product": 40.0, "override": True, "override_reason": "CSM sentiment red: one tier down", "raw_band": "Yellow"}
    assert second["override"] is False and second["override_reason"] is None and second["product"] == 90.0


def test_missing_figures_are_stored_as_null_never_as_zero_nor_nan():
    """History and usage rows are built column by column: a missing score, dimension or usage figure stays None."""
    settings = load_settings()
    scores = pd.DataFrame({
        "account_id": ["sf:1", "sf:2"], "score": [float("nan"), 61.5], "band": [None, "Yellow"], "confidence": [0.5, float("nan")],
        "drivers": ["x", None], "trend": [None, "down"], "product_score": [float("nan"), 12.25],
    })
    rows = history_rows(scores, settings, "run-1", datetime(2026, 11, 1, tzinfo=timezone.utc))
    assert [(r["account_id"], r["score"], r["band"], r["confidence"], r["drivers"], r["trend"]) for r in rows] == [
        ("sf:1", None, None, 0.5, "x", None), ("sf:2", 61.5, "Yellow", None, None, "down")]
    assert [r["dimension_json"] for r in rows] == ['{"product":null}', '{"product":12.25}']  # canonical JSON, as dumps writes it
    assert {r["scored_at"] for r in rows} == {datetime(2026, 11, 1)}

    features = pd.DataFrame({"account_id": ["sf:1", "sf:2", "sf:3", "sf:2"], "active_users_30d": [3, None, 9, 7],
                             "seats_purchased": [10, 10, 10, 12]})
    usage = usage_rows(features, pd.Series(["sf:1", "sf:2"]))
    assert usage == [  # the last row of an account wins; accounts not scored are left out; no column -> None
        {"account_id": "sf:1", "active_users": 3.0, "seats_purchased": 10.0, "logins_per_user_week": None, "features_used": None,
         "features_available": None},
        {"account_id": "sf:2", "active_users": 7.0, "seats_purchased": 12.0, "logins_per_user_week": None, "features_used": None,
         "features_available": None},
    ]
