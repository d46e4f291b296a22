"""Backtest on the demo generator's history (whose churn mechanism is known) and on hand-built frames."""

import json

import numpy as np
import pandas as pd
import pytest

from healthsync.config.model import ModelConfig
from healthsync.connectors.demo_data import generate_history, write_history
from healthsync.connectors.files import read_history
from healthsync.engine.backtest import backtest, build_snapshots, format_text, history_frames, lead_time, score_snapshots

CONTRACT_KEYS = ("auc", "pr_auc", "brier", "accuracy", "precision", "recall", "f1")


def _with_weights(model: ModelConfig, weights: dict) -> ModelConfig:
    data = model.model_dump()
    for metric in data["metrics"]:
        metric["weight"] = weights.get(metric["name"], 0.0)
    return ModelConfig.model_validate(data)


def test_default_model_ranks_churn_on_the_demo_history(default_backtest):
    # issue 7 target: the default config (seed 003 weights) reaches AUC >= 0.75
    assert default_backtest["auc"] >= 0.75
    # PR-AUC must beat the no-skill floor (the base rate) by a wide margin
    assert default_backtest["pr_auc"] > 2 * default_backtest["base_rate"]
    # Platt fitted forward in time is calibrated: well under the no-skill Brier p(1-p)
    base = default_backtest["base_rate"]
    assert default_backtest["brier"] < base * (1 - base)


def test_report_is_strict_json_with_the_contract_keys(default_backtest):
    text = json.dumps(default_backtest, allow_nan=False)
    report = json.loads(text)
    for key in CONTRACT_KEYS:
        assert isinstance(report[key], float), key
    assert isinstance(report["forecast"]["mape_before"], float)
    assert isinstance(report["forecast"]["mape_after"], float)
    assert "drift" in report and report["drift"]["metrics"]


def test_operational_view_adds_up(default_backtest, demo_history):
    c = default_backtest["confusion"]
    assert sum(c.values()) == len(demo_history.accounts_history) == default_backtest["rows"]
    assert c["true_positive"] + c["false_negative"] == int(demo_history.accounts_history["churned"].sum())
    assert default_backtest["recall"] == pytest.approx(c["true_positive"] / (c["true_positive"] + c["false_negative"]))
    assert default_backtest["at_risk_bands"] == ["Red"]


def test_retention_falls_with_the_score_range(default_backtest):
    rates = [r["retention_rate"] for r in default_backtest["retention_by_score"]]  # 90-100 first, <50 last
    assert sum(r["n"] for r in default_backtest["retention_by_score"]) == default_backtest["rows"]
    assert rates == sorted(rates, reverse=True)
    assert rates[0] - rates[-1] > 0.3


def test_reliability_deciles_track_observed_churn(default_backtest):
    rows = default_backtest["reliability"]
    assert len(rows) == 10
    assert rows[-1]["observed_rate"] > 5 * rows[0]["observed_rate"]
    for r in rows:
        assert abs(r["mean_predicted"] - r["observed_rate"]) < 0.1


def test_false_negatives_and_positives_name_accounts_with_drivers(default_backtest):
    fn, fp = default_backtest["false_negatives"], default_backtest["false_positives"]
    assert len(fn) == 10 and len(fp) == 10
    assert all(case["band"] != "Red" and case["drivers"] for case in fn)
    assert all(case["band"] == "Red" and case["drivers"] for case in fp)
    # most confidently wrong first: missed churners by descending score, false alarms by ascending score
    assert [c["score"] for c in fn] == sorted((c["score"] for c in fn), reverse=True)
    assert [c["score"] for c in fp] == sorted(c["score"] for c in fp)
    assert len({c["account_id"] for c in fn}) == len(fn)


def test_given_an_uncalibrated_default_when_backtested_then_every_period_keeps_its_book_within_2_percent(
        default_backtest, demo_history):
    fc = default_backtest["forecast"]
    assert len(fc["periods"]) == 6
    opps = demo_history.opportunities_history
    first = fc["periods"][0]
    rows = opps[opps["as_of"] == pd.Timestamp(first["as_of"])]
    assert first["actual_won_arr"] == pytest.approx(rows["won_amount"].sum())
    assert first["expected_before"] == pytest.approx((rows["amount"] * rows["probability"]).sum())
    # issue 11: until calibrated, health only moves probability between deals (renormalised multipliers)
    for period in fc["periods"]:
        assert abs(period["expected_after"] / period["expected_before"] - 1) <= 0.02, period
    assert abs(fc["book_change"]) <= 0.02
    assert fc["uplift"] == pytest.approx((fc["mape_before"] - fc["mape_after"]) / fc["mape_before"])


def test_given_the_seeds_absolute_multipliers_when_backtested_on_the_demo_history_then_they_move_the_book(
        demo_history, settings):
    # the documented option (renormalise: false). The demo generator draws wins as stage probability x a
    # health multiplier like the seed's, so the MAPE cut here is by construction, not evidence (README).
    absolute = settings.forecast.model_copy(update={"renormalise": False})
    fc = backtest(demo_history, settings.model, absolute)["forecast"]
    assert fc["book_change"] > 0.05
    assert fc["mape_after"] <= 0.75 * fc["mape_before"]


def test_challenger_is_compared_metric_by_metric(demo_history, settings):
    # a challenger that puts all weight on email response (no signal in the generator) must lose on AUC
    weak = _with_weights(settings.model, {"email_response": 0.5, "ticket_trend": 0.5})
    report = backtest(demo_history, settings.model, settings.forecast, challenger_model=weak)
    assert report["challenger"]["auc"] < report["auc"]
    assert report["winner"]["auc"] == "champion"
    assert report["winner"]["pr_auc"] == "champion"
    assert set(report["winner"]) >= {"auc", "pr_auc", "brier", "accuracy", "precision", "recall", "f1",
                                     "forecast.mape_after"}
    assert isinstance(report["challenger"]["forecast"]["mape_after"], float)
    text = format_text(report)
    assert "Challenger" in text and "Winner per metric" in text and "auc" in text


def test_console_report_shows_every_section(default_backtest):
    text = format_text(default_backtest)
    for fragment in ("AUC-ROC", "PR-AUC", "Brier", "precision", "recall", "lead time", "reliability",
                     "retention by score range", "MAPE", "missed churn", "false alarms", "Drift"):
        assert fragment in text, fragment


def test_history_read_from_files_gives_the_same_backtest(tmp_path, settings):
    history = generate_history(600, seed=5, snapshots=3)
    write_history(history, tmp_path)
    frames, problems = read_history(tmp_path)
    assert not problems
    from_files = backtest(frames, settings.model, settings.forecast)
    in_memory = backtest(history, settings.model, settings.forecast)
    for key in CONTRACT_KEYS:
        assert from_files[key] == pytest.approx(in_memory[key]), key
    assert from_files["forecast"]["mape_after"] == pytest.approx(in_memory["forecast"]["mape_after"])


def test_missing_outcome_column_is_a_clear_error(demo_history, settings):
    frames = {"accounts_history": demo_history.accounts_history.drop(columns=["churned"]),
              "tickets": demo_history.tickets}
    with pytest.raises(ValueError, match=r"missing the column\(s\) \['churned'\]"):
        backtest(frames, settings.model)


def test_lead_time_counts_days_from_the_first_red_of_the_final_run_to_churn():
    d = pd.to_datetime(["2025-01-01", "2025-04-01", "2025-07-01", "2025-10-01"])
    scored = pd.DataFrame({
        # A: red, green, red, red, then gone at d[3] -> run starts d[1]... no: d[2] (green at d[1] breaks it)
        "account_id": ["A", "A", "A", "B", "B", "C", "C", "C", "C"],
        "as_of": [d[0], d[1], d[2], d[0], d[1], d[0], d[1], d[2], d[3]],
        "churned": [0, 1, 1, 1, 1, 0, 0, 1, 1],
        "flagged": [True, False, True, False, False, True, True, True, True],
    })
    # A: present up to d[2], churned -> churn date d[3]; trailing red run = [d[2]] -> 92 days
    # B: gone at d[2], never red before leaving -> churned but not flagged
    # C: still present in the last snapshot -> no churn date yet, not counted
    out = lead_time(scored, list(d))
    assert out["churned_accounts"] == 2
    assert out["flagged_before_churn"] == 1
    assert out["median_days"] == (d[3] - d[2]).days == 92


def test_future_outcomes_and_tickets_never_reach_earlier_snapshots(demo_history, settings):
    """Leakage: shuffle outcomes of the later periods and add later tickets -> earlier features and scores identical."""
    dates = sorted(demo_history.accounts_history["as_of"].unique())
    cutoff = pd.Timestamp(dates[2])
    rng = np.random.default_rng(0)
    acc = demo_history.accounts_history.copy()
    future = acc["as_of"] > cutoff
    acc.loc[future, "churned"] = rng.permutation(acc.loc[future, "churned"].to_numpy())
    # every account also gets a burst of escalated P1 tickets the day after the cutoff
    extra = pd.DataFrame({
        "ticket_id": [f"LEAK{i}" for i in range(acc["account_id"].nunique())],
        "account_id": acc["account_id"].unique(),
        "priority": "P1", "status": "open",
        "created_at": cutoff + pd.Timedelta(days=1, hours=3), "closed_at": pd.NaT, "escalated": True,
    })
    tickets = pd.concat([demo_history.tickets, extra.astype(demo_history.tickets.dtypes.to_dict())], ignore_index=True)
    opps = demo_history.opportunities_history.copy()
    opps.loc[opps["as_of"] > cutoff, "won_amount"] = 0.0
    original = {"accounts_history": demo_history.accounts_history, "tickets": demo_history.tickets,
                "opportunities_history": demo_history.opportunities_history}
    tampered = {"accounts_history": acc, "tickets": tickets, "opportunities_history": opps}

    snaps_a = build_snapshots(history_frames(original), settings.model)
    snaps_b = build_snapshots(history_frames(tampered), settings.model)
    early_a = [s for s in snaps_a if s.as_of <= cutoff]
    early_b = [s for s in snaps_b if s.as_of <= cutoff]
    assert len(early_a) == 3
    for a, b in zip(early_a, early_b):
        pd.testing.assert_frame_equal(a.features, b.features)
    pd.testing.assert_frame_equal(score_snapshots(early_a, settings.model).drop(columns=["churned"]),
                                  score_snapshots(early_b, settings.model).drop(columns=["churned"]))
    # the tampering is real: the later snapshots' features did change
    late_a = [s for s in snaps_a if s.as_of > cutoff][0].features["escalations_90d"]
    late_b = [s for s in snaps_b if s.as_of > cutoff][0].features["escalations_90d"]
    assert (late_b.to_numpy() > late_a.to_numpy()).all()
    # and outcomes are never features: no snapshot's features carry the churned column
    assert all("churned" not in s.features.columns for s in snaps_b)
