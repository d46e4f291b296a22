"""The seeds' worked examples, expressed as configuration and run through the engine."""

import numpy as np
import pandas as pd
import pytest

from healthsync.config.model import ForecastConfig, ModelConfig
from healthsync.config.settings import load_settings
from healthsync.engine.forecast import adjust_opportunities
from healthsync.engine.scoring import HealthScorer

SEED_BANDS = [  # seed 001: "Final Health Score: 74 (Moderate)"
    {"name": "At risk", "min": 0, "max": 59},
    {"name": "Moderate", "min": 60, "max": 79},
    {"name": "Healthy", "min": 80, "max": 100},
]


def identity_model(weights: dict[str, float], **extra) -> ModelConfig:
    metrics = [
        {"name": k, "label": k, "dimension": k, "weight": w, "rule": {"type": "identity", "column": k}}
        for k, w in weights.items()
    ]
    return ModelConfig(metrics=metrics, bands=SEED_BANDS, **extra)


def test_five_dimension_example_scores_74():
    # seed 001_9b7515619717186a.txt "Calculation Example": 28.0 + 17.5 + 15.0 + 9.0 + 4.5 = 74.0
    weights = {"usage": 0.35, "engagement": 0.25, "value": 0.20, "relationship": 0.15, "financial": 0.05}
    values = {"usage": 80, "engagement": 70, "value": 75, "relationship": 60, "financial": 90}
    scored = HealthScorer(identity_model(weights)).score(pd.DataFrame([{"account_id": "a", **values}]))
    row = scored.iloc[0]
    assert row["score"] == 74.0
    assert row["band"] == "Moderate"
    assert row["confidence"] == 1.0
    for dim, value in values.items():
        assert row[f"{dim}_score"] == value


def test_four_dimension_example_scores_73():
    # seed 001 "Simple Weighted Average": 30.0 + 20.0 + 14.0 + 9.0 = 73
    weights = {"usage": 0.40, "engagement": 0.25, "sentiment": 0.20, "relationship": 0.15}
    values = {"usage": 75, "engagement": 80, "sentiment": 70, "relationship": 60}
    scored = HealthScorer(identity_model(weights)).score(pd.DataFrame([{"account_id": "a", **values}]))
    assert scored["score"].iloc[0] == 73.0


def points_model() -> ModelConfig:
    """Seed 001 "Points-Based Scoring" table as a points-method model.

    Rules award the table's absolute points; weights are each criterion's share of the model
    (only used to redistribute when a criterion is unknown)."""
    metrics = [
        {"name": "license", "label": "License utilisation", "dimension": "usage", "weight": 0.20,
         "rule": {"type": "steps", "column": "license_utilization",
                  "steps": [{"min": 0.8, "points": 20}, {"min": 0.6, "points": 15}], "else_points": 5}},
        {"name": "qbr", "label": "Attended last QBR", "dimension": "engagement", "weight": 0.15,
         "rule": {"type": "boolean", "column": "attended_last_qbr", "true_points": 15, "false_points": 0}},
        {"name": "exec", "label": "Exec sponsor", "dimension": "relationship", "weight": 0.15,
         "rule": {"type": "boolean", "column": "exec_sponsor_identified", "true_points": 15, "false_points": 0}},
        {"name": "champion", "label": "Champion", "dimension": "relationship", "weight": 0.10,
         "rule": {"type": "boolean", "column": "champion_active", "true_points": 10, "false_points": 0}},
        {"name": "nps", "label": "NPS", "dimension": "sentiment", "weight": 0.15,
         "rule": {"type": "steps", "column": "nps", "steps": [{"min": 9, "points": 15}, {"min": 7, "points": 10}],
                  "else_points": 0}},
        {"name": "tickets", "label": "Support tickets", "dimension": "support", "weight": 0.10,
         "rule": {"type": "steps", "column": "support_tickets", "steps": [{"min": 1, "points": 0}], "else_points": 10}},
        {"name": "adoption", "label": "Feature adoption", "dimension": "usage", "weight": 0.15,
         "rule": {"type": "steps", "column": "feature_adoption", "steps": [{"min": 0.7, "points": 10}], "else_points": 0}},
    ]
    return ModelConfig(method="points", metrics=metrics, bands=SEED_BANDS, csm_override={"enabled": False})


def test_points_example_customer_a_scores_65():
    customer_a = {
        "account_id": "customer-a", "license_utilization": 0.75, "attended_last_qbr": True,
        "exec_sponsor_identified": True, "champion_active": False, "nps": 8, "support_tickets": 2,
        "feature_adoption": 0.80,
    }
    row = HealthScorer(points_model()).score(pd.DataFrame([customer_a])).iloc[0]
    # 15 + 15 + 15 + 0 + 10 + 0 + 10 = 65 (Moderate)
    assert row["score"] == 65.0
    assert row["band"] == "Moderate"
    assert [row[f"m_{m}"] for m in ("license", "qbr", "exec", "champion", "nps", "tickets", "adoption")] == [
        15, 15, 15, 0, 10, 0, 10,
    ]


def _one_opportunity(probability: float, score: float, delta: float | None, kind: str = "new_business"):
    opps = pd.DataFrame([{
        "opportunity_id": "o1", "account_id": "a1", "amount": 100_000.0, "probability": probability,
        "is_closed": False, "type": kind,
    }])
    scored = pd.DataFrame([{"account_id": "a1", "score": score, "band": "Yellow",
                            "delta_30d": np.nan if delta is None else delta}])
    return opps, scored


def seed_forecast():
    """The default forecast with the seed's absolute multipliers (`renormalise: false`, the documented option)."""
    return load_settings().forecast.model_copy(update={"renormalise": False})


def test_delta_formula_example_44_percent():
    # seed 000: 50% x (1 + (-15/100) x 0.8) = 44%; $100,000 x 0.44 = $44,000 (down from $50,000)
    opps, scored = _one_opportunity(0.50, 60.0, -15.0)
    config = ForecastConfig(method="delta", sensitivity=0.8, max_swing=0.3, renormalise=False)
    row = adjust_opportunities(opps, scored, config).iloc[0]
    assert row["adjusted_probability"] == pytest.approx(0.44, abs=1e-9)
    assert row["expected_arr"] == 44_000.00
    assert row["base_expected_arr"] == 50_000.00


# seed 000 "Mapping Health Score Bands to Forecast Probabilities", every row:
# (label, base probability, score, 30-day delta, opportunity type, adjusted probability)
TABLE = [
    ("0-30 At-Risk", 0.50, 20.0, 0.0, "new_business", 0.30),
    ("31-70 Neutral", 0.50, 50.0, 0.0, "new_business", 0.50),
    ("71-100 Healthy", 0.50, 85.0, 0.0, "new_business", 0.70),
    ("Improving (+10 pts)", 0.50, 50.0, 10.0, "new_business", 0.60),
    ("Declining (-10 pts)", 0.50, 50.0, -10.0, "new_business", 0.40),
    ("Expansion Signal", 0.30, 85.0, 0.0, "expansion", 0.45),
    ("Churn Risk", 0.80, 20.0, 0.0, "renewal", 0.40),
]


@pytest.mark.parametrize("label,base,score,delta,kind,expected", TABLE, ids=[t[0] for t in TABLE])
def test_band_multiplier_table(label, base, score, delta, kind, expected):
    forecast = seed_forecast()
    # the table itself has no swing limit (x1.4, x1.5, x0.5 exceed 30 %); the default limit is tested below
    config = forecast.model_copy(update={"max_swing": 1.0})
    opps, scored = _one_opportunity(base, score, delta, kind)
    row = adjust_opportunities(opps, scored, config).iloc[0]
    assert row["adjusted_probability"] == pytest.approx(expected, abs=1e-9)
    assert row["expected_arr"] == pytest.approx(100_000 * expected, abs=0.005)


def test_band_boundaries_of_multiplier_ranges_are_inclusive_minimums():
    config = seed_forecast().model_copy(update={"max_swing": 1.0})
    for score, expected in ((30.9, 0.30), (31.0, 0.50), (70.9, 0.50), (71.0, 0.70)):
        opps, scored = _one_opportunity(0.50, score, 0.0)
        assert adjust_opportunities(opps, scored, config)["adjusted_probability"].iloc[0] == pytest.approx(expected)


def test_default_max_swing_limits_healthy_multiplier_to_30_percent():
    opps, scored = _one_opportunity(0.50, 85.0, 12.0)  # 1.4 x 1.2 = 1.68 -> limited to 1.3
    row = adjust_opportunities(opps, scored, seed_forecast()).iloc[0]
    assert row["adjusted_probability"] == pytest.approx(0.65)


def test_probability_clipped_to_one():
    opps, scored = _one_opportunity(0.90, 85.0, 0.0)  # 0.9 x 1.3 = 1.17 -> 1.0
    assert adjust_opportunities(opps, scored, seed_forecast())["adjusted_probability"].iloc[0] == 1.0
