"""Score history keeps the CSM override with each row, so the report can show when and why a CSM moved a band."""

import json
from datetime import datetime, timezone

import pandas as pd

from healthsync.config.settings import load_settings
from healthsync.sync.score_job import history_rows


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
