"""calibrate: time-ordered learning of weights, thresholds and the probability map, and its overlay."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from healthsync.config.settings import load_settings
from healthsync.engine.backtest import backtest
from healthsync.engine.calibration import InsufficientHistoryError, calibrate, with_boundary

DAY0 = pd.Timestamp("2025-01-01")


def synthetic_history(n: int = 3000, snapshots: int = 4, seed: int = 0, churn_intercept: float = -2.2):
    """Accounts whose churn depends on license utilisation only; logins and the rest are pure noise.

    License utilisation is a default metric with weight 0.10, login frequency
    one with 0.15: `calibrate` must move weight from the second to the first.
    """
    rng = np.random.default_rng(seed)
    ids = np.array([f"S{i:05d}" for i in range(n)], dtype=object)
    frames = []
    for k in range(snapshots):
        as_of = DAY0 + pd.Timedelta(days=90 * k)
        latent = rng.standard_normal(n)
        util = 1 / (1 + np.exp(-(0.8 + 1.2 * latent)))
        churn_p = 1 / (1 + np.exp(-(churn_intercept - 1.8 * latent)))
        frames.append(pd.DataFrame({
            "account_id": ids,
            "segment": "mid_market",
            "arr": 10000.0,
            "seats_purchased": 100,
            "active_users_30d": rng.binomial(100, util),
            "logins_per_user_week": np.round(rng.lognormal(0.5, 1.0, n), 2),
            "features_used": rng.integers(0, 21, n),
            "features_available": 20,
            "qbrs_missed": rng.integers(0, 3, n),
            "email_response_hours": np.round(rng.lognormal(3.0, 0.7, n), 1),
            "exec_sponsor": rng.choice(["active", "partial", "none"], n),
            "days_payment_late": np.where(rng.random(n) < 0.2, rng.integers(1, 60, n), 0),
            "csm_sentiment": rng.choice(["green", "yellow", "red"], n),
            "customer_since": as_of - pd.Timedelta(days=700),
            "renewal_date": as_of + pd.Timedelta(days=200),
            "as_of": as_of,
            "churned": (rng.random(n) < churn_p).astype(int),
        }))
    tickets = pd.DataFrame({"ticket_id": pd.Series([], dtype="string"), "account_id": pd.Series([], dtype="string"),
                            "priority": pd.Series([], dtype="string"), "status": pd.Series([], dtype="string"),
                            "created_at": pd.Series([], dtype="datetime64[ns]"),
                            "closed_at": pd.Series([], dtype="datetime64[ns]"),
                            "escalated": pd.Series([], dtype="boolean")})
    return {"accounts_history": pd.concat(frames, ignore_index=True), "tickets": tickets}


@pytest.mark.parametrize("method", ["correlation", "logistic"])
def test_calibrate_moves_weight_to_the_metric_that_predicts_churn(settings, method):
    history = synthetic_history()
    result = calibrate(history, settings.model, settings.forecast, method=method)
    before = {m.name: m.weight for m in settings.model.metrics}
    after = result.weights
    assert before["login_frequency"] == 0.12 and before["license_utilization"] == 0.08  # seed 003 x 0.8 (issue 15 reweighting)
    assert after["login_frequency"] < 0.05
    assert after["license_utilization"] > 0.6
    assert abs(sum(after.values()) - 1.0) < 1e-9
    # time-ordered split: three snapshots train, the last one validates
    assert result.train_periods == ["2025-01-01", "2025-04-01", "2025-06-30"]
    assert result.validation_periods == ["2025-09-28"]
    held_out, baseline = result.report, result.report["baseline"]
    assert held_out["periods"] == ["2025-09-28"]
    assert held_out["auc"] > baseline["auc"] + 0.1
    assert result.report["improvement"]["auc"] == "calibrated"


def test_thin_history_is_refused_with_what_is_thin(settings):
    history = synthetic_history(n=400, snapshots=1)
    with pytest.raises(InsufficientHistoryError, match="a time split needs at least two as_of snapshots"):
        calibrate(history, settings.model, split="time")
    # one snapshot: a random, stratified holdout, which 200 accounts cannot feed with 50 churn events
    with pytest.raises(InsufficientHistoryError, match=r"random split: .* has \d+ churn events"):
        calibrate(synthetic_history(n=200, snapshots=1), settings.model)
    # few churn events: rare churn in a small book
    history = synthetic_history(n=300, snapshots=3, churn_intercept=-5.0)
    with pytest.raises(InsufficientHistoryError, match=r"has \d+ churn events; calibration needs at least 50"):
        calibrate(history, settings.model)
    assert issubclass(InsufficientHistoryError, ValueError)


def test_calibrated_model_on_the_held_out_period_of_the_demo_history(calibrated):
    for method, result in calibrated.items():
        report = result.report
        assert report["periods"] == result.validation_periods
        assert len(result.train_periods) == 4 and len(result.validation_periods) == 2
        assert max(result.train_periods) < min(result.validation_periods)
        # issue 7 targets reachable under the generator's mechanism
        assert report["auc"] >= 0.80, method
        assert report["brier"] <= 0.15, method
        assert report["probability_method"] == "model.fitted (platt)"
        assert report["forecast"]["mape_after"] <= 0.75 * report["forecast"]["mape_before"], method
        # thresholds were tuned to the target on the training period
        assert report["calibration"]["train_recall"] >= 0.75
        # held-out recall stays close to the target (see the xfail below for the exact target)
        assert report["recall"] >= 0.65, method
        assert report["recall"] > report["baseline"]["recall"], method
        json.dumps(report, allow_nan=False)


def test_logistic_calibration_reaches_75_recall_at_60_precision_on_held_out(calibrated):
    # issue 7 targets for the at-risk bands; the correlation method (seed 001 method 1) ranks less sharply
    # (weights proportional to marginal correlations ignore that the metrics share one latent health)
    report = calibrated["logistic"].report
    assert report["recall"] >= 0.75
    assert report["precision"] >= 0.60
    assert calibrated["correlation"].report["precision"] > calibrated["correlation"].report["baseline"]["precision"]


def test_band_rules_that_cost_precision_are_switched_off_with_a_warning(calibrated, settings):
    result = calibrated["logistic"]
    cal = result.report["calibration"]
    precision = cal["band_rule_precision"]
    assert set(precision) == {"as configured", "without the CSM sentiment override",
                              "without segment/lifecycle threshold overrides",
                              "without the CSM override and threshold overrides"}
    chosen = cal["band_rules"]
    assert precision[chosen] == max(precision.values())
    if chosen != "as configured":
        assert precision[chosen] >= precision["as configured"] + 0.02
        assert any(w.startswith("band rules:") for w in cal["warnings"])
    if "CSM" in chosen:
        assert result.overlay["model"]["csm_override"] == {"enabled": False}
        assert not result.model.csm_override.enabled
    else:
        assert "csm_override" not in result.overlay["model"]


def test_fast_band_flags_equal_the_scorer_bands(calibrated, demo_history, settings):
    """The tuning loop's shortcut (engine.calibration.BandFlags) must agree with the real scorer."""
    from healthsync.engine.backtest import build_snapshots, history_frames, score_snapshots
    from healthsync.engine.calibration import BandFlags, with_boundary

    acc = demo_history.accounts_history
    frames = history_frames({"accounts_history": acc[acc["as_of"] <= sorted(acc["as_of"].unique())[1]],
                             "tickets": demo_history.tickets})
    model = calibrated["correlation"].model
    configured = model.model_copy(update={"lifecycle": settings.model.lifecycle, "segments": settings.model.segments,
                                          "csm_override": settings.model.csm_override})
    snaps = build_snapshots(frames, configured)
    flags = BandFlags(snaps, configured)
    for boundary in (30, 55, 75):
        candidate = with_boundary(configured, boundary)
        expected = score_snapshots(snaps, candidate)["flagged"].to_numpy()
        assert (flags.flagged(candidate) == expected).all(), boundary
    assert flags.shift.min() == -1 and flags.shift.max() == 1  # the CSM override really is exercised


def test_overlay_loads_as_a_config_and_the_fitted_method_uses_its_probabilities(calibrated, demo_history,
                                                                                 tmp_path, settings):
    result = calibrated["correlation"]
    path = tmp_path / "calibrated.yaml"
    path.write_text(yaml.safe_dump(result.overlay, sort_keys=False))
    loaded = load_settings(None, overlays=[path])
    assert {m.name: m.weight for m in loaded.model.metrics} == result.weights
    assert [(b.name, b.min, b.max) for b in loaded.model.bands] == [(b.name, b.min, b.max) for b in result.model.bands]
    assert loaded.model.fitted == result.model.fitted and loaded.model.fitted.kind == "platt"
    # the backtest of the loaded overlay on the held-out periods reproduces the calibration report
    acc = demo_history.accounts_history
    held_out = {"accounts_history": acc[acc["as_of"] >= pd.Timestamp(result.validation_periods[0])],
                "tickets": demo_history.tickets}
    again = backtest(held_out, loaded.model)
    assert again["auc"] == pytest.approx(result.report["auc"])
    assert again["brier"] == pytest.approx(result.report["brier"])
    # method fitted: health = 100 - 100 x p, so its Brier from the scores is the same calibrated Brier
    fitted = loaded.model.model_copy(update={"method": "fitted"})
    fitted_report = backtest(held_out, fitted)
    assert fitted_report["probability_method"] == "model.fitted (method fitted)"
    assert fitted_report["brier"] == pytest.approx(result.report["brier"], abs=1e-4)
    assert fitted_report["auc"] == pytest.approx(result.report["auc"], abs=2e-3)


def test_isotonic_map_is_monotone_and_loads(settings, tmp_path):
    result = calibrate(synthetic_history(n=2000), settings.model, probability="isotonic")
    fitted = result.model.fitted
    assert fitted.kind == "isotonic" and len(fitted.x) >= 2
    assert list(fitted.x) == sorted(fitted.x)
    assert all(a >= b for a, b in zip(fitted.y, fitted.y[1:]))  # higher score, lower churn probability
    assert fitted.y[0] > 3 * fitted.y[-1]
    path = tmp_path / "iso.yaml"
    path.write_text(yaml.safe_dump(result.overlay))
    assert load_settings(None, overlays=[path]).model.fitted.kind == "isotonic"
    assert result.report["probability_method"] == "model.fitted (isotonic)"
    assert result.report["brier"] <= 0.15


def test_moving_the_at_risk_boundary_moves_every_threshold_in_order(settings):
    moved = with_boundary(settings.model, 60)
    assert [(b.name, b.min, b.max) for b in moved.bands] == [("Red", 0, 59), ("Yellow", 60, 79), ("Green", 80, 100)]
    # 0-41 -> 0-60 and 41-100 -> 60-100: smb's Green 80 -> 60 + 39 x 40/59 = 86.4 -> 86
    assert moved.segments["smb"].thresholds == {"Green": 86.0}
    assert moved.segments["enterprise"].thresholds == {"Green": 80.0}
    onboarding = moved.lifecycle.stages[0]
    assert onboarding.thresholds == {"Yellow": 59.0, "Green": 73.0}
    assert moved.lifecycle.renewal_window.thresholds == {"Yellow": 76.0}
    # extreme boundaries still give a valid model (overrides squeezed, never overlapping)
    assert with_boundary(settings.model, 99).bands[-1].min == 100
    assert with_boundary(settings.model, 1).bands[1].min == 1


def test_calibrating_a_fitted_method_model_tunes_bands_on_health_as_100_minus_100p(settings):
    model = settings.model.model_copy(update={"method": "fitted"})  # nothing fitted yet
    result = calibrate(synthetic_history(n=2000), model)
    assert result.model.method == "fitted" and result.model.fitted.kind == "platt"
    assert "method" not in result.overlay["model"]  # unchanged from the configuration
    report = result.report
    assert report["probability_method"] == "model.fitted (method fitted)"
    assert report["calibration"]["train_recall"] >= 0.75
    assert report["auc"] > report["baseline"]["auc"]
