"""The pieces issue 11 added to calibrate, each against a hand-made case: the forecast fit and its guardrail,
directions turned around, history labels, lead time from `churned_at`."""

import numpy as np
import pandas as pd
import pytest
import yaml

import histories
from healthsync.config.canonical import validate_frame
from healthsync.config.model import ModelConfig
from healthsync.config.settings import load_settings
from healthsync.engine.backtest import HistoryError, history_frames, lead_time
from healthsync.engine.calibration import calibrate
from healthsync.engine.directions import turned_around
from healthsync.engine.forecast_fit import fit_forecast
from healthsync.engine.scoring import HealthScorer


def test_given_few_deals_with_no_health_effect_when_fitted_then_the_map_is_shrunk_towards_no_change(monkeypatch):
    from healthsync.engine import forecast_fit
    from healthsync.engine.forecast import fitted_win_probability

    rng = np.random.default_rng(0)
    n = 80
    base, score = rng.choice([0.2, 0.5, 0.8], n), rng.uniform(10, 95, n)
    won = rng.random(n) < base
    no_delta = np.full(n, np.nan)

    def departure(fitted):  # mean |P(win) - CRM probability| over the deals
        return np.abs(fitted_win_probability(base, score, no_delta, fitted) - base).mean()

    fitted = fit_forecast(base, score, no_delta, won)
    assert fitted.trend_coef == 0.0 and fitted.opportunities == n  # no deltas: no trend term
    assert departure(fitted) < 0.1
    for name in ("PRIOR_SD_BASE", "PRIOR_SD_HEALTH"):
        monkeypatch.setattr(forecast_fit, name, 100.0)  # (almost) no prior: the fit chases the noise
    assert departure(fit_forecast(base, score, no_delta, won)) > 1.5 * departure(fitted)


def test_given_many_deals_with_a_step_when_fitted_then_the_weak_end_loses_odds():
    rng = np.random.default_rng(1)
    n = 20_000
    base, score = rng.choice([0.2, 0.5, 0.8], n), rng.uniform(0, 100, n)
    won = rng.random(n) < np.clip(base - 0.3 * (score < 40), 0.02, 0.98)
    fitted = fit_forecast(base, score, rng.normal(0, 5, n), won)
    shift = dict(zip(fitted.health_x, fitted.health_y))
    assert min(v for x, v in shift.items() if x < 30) < -1.0
    assert all(abs(v) < 0.2 for x, v in shift.items() if x > 50)
    assert abs(fitted.trend_coef) < 0.1  # the deltas were noise


def test_given_held_out_deals_that_the_fit_misjudges_when_calibrated_then_the_forecast_is_switched_off_in_one_line():
    history = histories.optimistic_step_history(n=2500, seed=3)
    opps = history["opportunities_history"]
    last = opps["as_of"] == opps["as_of"].max()
    rng = np.random.default_rng(5)
    # the held-out quarter's CRM probabilities were right after all: the fitted discount now hurts
    won = rng.random(int(last.sum())) < opps.loc[last, "probability"].to_numpy()
    opps.loc[last, "won"] = won.astype(int)
    opps.loc[last, "won_amount"] = np.where(won, opps.loc[last, "amount"], 0.0)
    settings = load_settings()
    result = calibrate(history, settings.model, settings.forecast, method="logistic")
    fc = result.report["forecast"]
    assert fc["mape_after"] > fc["mape_before"] and fc["enabled"] is False
    assert result.overlay["forecast"] == {"enabled": False}
    assert result.forecast.enabled is False
    lines = [w for w in result.report["warnings"] if "did not lower held-out error" in w]
    assert len(lines) == 1 and "forecast.enabled: false" in lines[0] and "\n" not in lines[0]


RULES = [
    ({"type": "steps", "column": "x", "steps": [{"min": 5, "points": 100}, {"min": 1, "points": 70}], "else_points": 0},
     {"x": [6, 2, 0]}, [0, 30, 100]),
    ({"type": "linear", "column": "x", "zero_at": 0, "full_at": 10}, {"x": [0, 5, 10]}, [100, 50, 0]),
    ({"type": "ratio", "numerator": "a", "denominator": "b", "zero_at": 0, "full_at": 1},
     {"a": [0, 1, 2], "b": [2, 2, 2]}, [100, 50, 0]),
    ({"type": "category", "column": "x", "points": {"g": 100, "y": 50, "r": 0}}, {"x": ["g", "y", "r"]}, [0, 50, 100]),
    ({"type": "boolean", "column": "x", "true_points": 100, "false_points": 20}, {"x": [True, False, True]},
     [0, 80, 0]),
    ({"type": "identity", "column": "x"}, {"x": [0, 30, 100]}, [100, 70, 0]),
]


@pytest.mark.parametrize("rule,columns,expected", RULES, ids=[r[0]["type"] for r in RULES])
def test_given_a_rule_when_turned_around_then_it_gives_100_minus_its_points(rule, columns, expected):
    model = ModelConfig.model_validate({
        "metrics": [{"name": "m", "label": "M", "dimension": "d", "weight": 1.0, "rule": turned_around(rule)}],
        "bands": [{"name": "Red", "min": 0, "max": 40, "at_risk": True}, {"name": "Green", "min": 41, "max": 100}],
    })
    scored = HealthScorer(model).score(pd.DataFrame({"account_id": ["a", "b", "c"], **columns}))
    assert scored["m_m"].tolist() == pytest.approx(expected)


def test_given_outcome_labels_as_people_write_them_when_read_then_all_parse_and_others_are_named():
    frame = pd.DataFrame({"account_id": list("abcdefgh"), "as_of": "2025-03-31",
                          "churned": ["Yes", "no", "TRUE", "f", "Y", "N", "1", "perhaps"]})
    valid, problems = validate_frame(frame, "accounts_history")
    assert valid.set_index("account_id")["churned"].to_dict() == {"a": 1, "b": 0, "c": 1, "d": 0, "e": 1, "f": 0,
                                                                 "g": 1}
    assert problems.lines() == ["accounts_history h: churned: not an outcome label: 'perhaps' "
                                "(use 0/1, true/false, yes/no or y/n) (record skipped)"]
    floats = pd.DataFrame({"account_id": ["a", "b"], "as_of": "2025-03-31", "churned": [1.0, 0.0]})
    assert validate_frame(floats, "accounts_history")[0]["churned"].tolist() == [1, 0]
    # the engine takes frames directly too: same spellings, and a clear error otherwise
    frames = history_frames({"accounts_history": frame.iloc[:7]})
    assert frames.accounts_history["churned"].tolist() == [1, 0, 1, 0, 1, 0, 1]
    with pytest.raises(HistoryError, match=r"churned must be 0/1, true/false, yes/no or y/n .* accounts h"):
        history_frames({"accounts_history": frame})
    with pytest.raises(HistoryError, match="no usable rows"):
        history_frames({"accounts_history": frame.iloc[:0]})


def test_given_churned_at_when_lead_time_is_measured_then_it_counts_to_that_day_not_the_next_snapshot():
    d = pd.to_datetime(["2025-01-01", "2025-01-02", "2025-01-03"])  # daily snapshots
    scored = pd.DataFrame({"account_id": ["A", "A", "A", "B", "B"], "as_of": [d[0], d[1], d[2], d[0], d[1]],
                           "churned": [1, 1, 1, 1, 1], "flagged": [True, True, True, False, True]})
    churned_at = pd.Series(pd.to_datetime(["2025-02-15"] * 3 + ["2025-01-20"] * 2))
    out = lead_time(scored, list(d), churned_at)
    # A: at risk from d[0], leaves 2025-02-15 -> 45 days; B: at risk from d[1], leaves 2025-01-20 -> 18 days
    assert out["churned_accounts"] == 2 and out["flagged_before_churn"] == 2
    assert sorted([out["median_days"] * 2 - 18, 18]) == [18, 45] and out["churn_date"] == "churned_at column"
    without = lead_time(scored, list(d))
    assert without["resolution_days"] == 1.0 and without["churned_accounts"] == 1  # only B left before the end


def test_given_a_stacked_overlay_when_calibrated_with_turned_metric_then_the_overlay_yaml_loads(tmp_path):
    config = tmp_path / "custom.yaml"
    config.write_text(yaml.safe_dump(histories.CROSS_SECTIONAL_CONFIG))
    settings = load_settings([config])
    history = histories.cross_sectional_history(n=3000, seed=2)
    history["accounts_history"]["churned"] = history["accounts_history"]["churned"].str.lower().str.startswith("y")
    result = calibrate(history, settings.model, method="logistic")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(result.overlay, sort_keys=False))
    loaded = load_settings([config, overlay])
    assert {m.name: m.weight for m in loaded.model.metrics} == result.weights
    tenure = {m.name: m for m in loaded.model.metrics}["tenure"].rule
    assert (tenure.zero_at, tenure.full_at) == (0.0, 72.0)


def test_given_accounts_with_too_little_data_when_backtested_then_their_share_is_reported_with_a_warning():
    from healthsync.engine.backtest import backtest

    history = histories.health_blind_deals_history(n=600, snapshots=2, seed=4)
    accounts = history["accounts_history"]
    sparse = accounts.index % 10 == 0  # every tenth account-snapshot keeps only its login figure
    keep = ["account_id", "as_of", "churned", "logins_per_user_week"]
    accounts.loc[sparse, [c for c in accounts.columns if c not in keep]] = np.nan
    report = backtest({"accounts_history": accounts}, load_settings().model)
    assert report["insufficient_share"] == pytest.approx(sparse.mean(), abs=0.01)
    lines = [w for w in report["warnings"] if "'Insufficient data'" in w]
    assert len(lines) == 1 and lines[0].startswith("10.0% of account-snapshots")
