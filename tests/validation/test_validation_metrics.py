"""The metric helpers against hand calculations (they feed every number of the backtest)."""

import math

import numpy as np
import pytest

from healthsync.engine import metrics as m
from healthsync.engine.calibration import normalise_weights
from healthsync.engine.drift import psi


def test_auc_counts_correctly_ordered_pairs():
    # churners risk 0.9, 0.4; retained 0.5, 0.1, 0.3 -> pairs won: (0.9: 3 of 3) + (0.4: 2 of 3) = 5 of 6
    assert m.auc([1, 1, 0, 0, 0], [0.9, 0.4, 0.5, 0.1, 0.3]) == pytest.approx(5 / 6)


def test_auc_and_pr_auc_are_none_with_one_class():
    assert m.auc([0, 0, 0], [1, 2, 3]) is None
    assert m.pr_auc([1, 1], [1, 2]) is None


def test_pr_auc_is_average_precision():
    # ranked by risk: 1 (hit), 0, 1 (hit) -> precision at hits 1 and 2/3 -> mean 5/6
    assert m.pr_auc([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(5 / 6)


def test_brier_is_mean_squared_error():
    assert m.brier([1, 0], [0.8, 0.4]) == pytest.approx((0.04 + 0.16) / 2)


def test_confusion_counts_and_rates():
    out = m.confusion([1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0, 0, 0])
    assert out["confusion"] == {"true_positive": 2, "false_positive": 1, "false_negative": 1, "true_negative": 4}
    assert out["accuracy"] == pytest.approx(6 / 8)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)


def test_confusion_without_flags_has_undefined_precision_not_zero():
    out = m.confusion([1, 0], [0, 0])
    assert out["precision"] is None and out["recall"] == 0.0 and out["f1"] == 0.0


def test_retention_by_score_uses_the_seed_001_ranges():
    rows = m.retention_by_score([95, 91, 85, 45, 40, 62], [0, 1, 0, 1, 0, 0])
    by_range = {r["range"]: r for r in rows}
    assert [r["range"] for r in rows] == ["90-100", "80-89", "70-79", "60-69", "50-59", "<50"]
    assert by_range["90-100"] == {"range": "90-100", "n": 2, "retention_rate": 0.5}
    assert by_range["<50"]["retention_rate"] == 0.5
    assert by_range["70-79"] == {"range": "70-79", "n": 0, "retention_rate": None}


def test_mape_and_mae_follow_seed_000_formulas():
    # |100-80|/100 = 20%, |200-250|/200 = 25% -> 22.5 %; MAE (20 + 50) / 2
    assert m.mape([100, 200], [80, 250]) == pytest.approx(22.5)
    assert m.mae([100, 200], [80, 250]) == pytest.approx(35.0)
    assert m.mape([0, 0], [1, 2]) is None


def test_reliability_table_has_deciles_of_predicted_probability():
    p = np.linspace(0.0, 0.99, 100)
    y = (np.arange(100) % 10 == 0).astype(int)  # one churner in each block of ten
    rows = m.reliability_table(y, p)
    assert len(rows) == 10 and all(r["n"] == 10 for r in rows)
    assert rows[0]["mean_predicted"] == pytest.approx(np.mean(p[:10]))
    assert all(r["observed_rate"] == pytest.approx(0.1) for r in rows)


def test_platt_recovers_a_known_score_to_probability_map():
    rng = np.random.default_rng(3)
    score = rng.uniform(0, 100, 40000)
    p = 1 / (1 + np.exp(-(3.0 - 0.08 * score)))
    y = (rng.random(len(score)) < p).astype(int)
    cal = m.PlattCalibrator().fit(score, y)
    assert cal.coef_ == pytest.approx(-0.08, abs=0.006)
    assert cal.intercept_ == pytest.approx(3.0, abs=0.25)


def test_psi_is_zero_for_the_same_distribution_and_matches_the_formula():
    assert psi([0, 50, 100, 100], [0, 50, 100, 100]) == pytest.approx(0.0)
    # discrete: reference 50/50 over {0, 100}; current 90/10 -> sum (c - r) ln(c / r)
    expected = (0.9 - 0.5) * math.log(0.9 / 0.5) + (0.1 - 0.5) * math.log(0.1 / 0.5)
    assert psi([0] * 50 + [100] * 50, [0] * 90 + [100] * 10) == pytest.approx(expected, rel=1e-3)


def test_psi_flags_a_shift_of_a_continuous_metric():
    rng = np.random.default_rng(0)
    ref = rng.normal(50, 10, 5000)
    assert psi(ref, rng.normal(50, 10, 5000)) < 0.02
    assert psi(ref, rng.normal(60, 10, 5000)) > 0.25


def test_normalised_weights_sum_to_one_exactly_after_rounding():
    raw = {f"m{i}": v for i, v in enumerate([0.31, 0.07, 0.0, 0.129, 0.2222, 0.3333, 0.1111])}
    weights = normalise_weights(raw)
    assert abs(sum(weights.values()) - 1.0) < 1e-9
    assert weights["m2"] == 0.0
    assert all(round(w, 4) == w for w in weights.values())
    assert weights["m5"] == pytest.approx(0.3333 / sum(raw.values()), abs=2e-4)


def test_json_safe_turns_nan_and_numpy_into_plain_json():
    out = m.json_safe({"a": np.float64("nan"), "b": np.int64(3), "c": [np.bool_(True), float("inf")]})
    assert out == {"a": None, "b": 3, "c": [True, None]}
