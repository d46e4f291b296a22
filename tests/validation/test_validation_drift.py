"""Drift: PSI per metric and the warnings of a silently broken integration (seed 003)."""

import numpy as np
import pandas as pd

from healthsync.engine.backtest import build_snapshots, history_frames, score_snapshots
from healthsync.engine.drift import drift_report


def _scored_with_features(history, model, as_of_filter):
    acc = history.accounts_history
    frames = history_frames({"accounts_history": acc[as_of_filter(acc["as_of"])], "tickets": history.tickets})
    snaps = build_snapshots(frames, model)
    scored = score_snapshots(snaps, model)
    feats = pd.concat([s.features for s in snaps], ignore_index=True)
    extra = [c for c in feats.columns if c not in scored.columns]
    return pd.concat([scored, feats[extra]], axis=1)


def test_a_stable_book_shows_no_drift_and_no_broken_inputs(demo_history, settings):
    last = demo_history.accounts_history["as_of"].max()
    reference = _scored_with_features(demo_history, settings.model, lambda d: d < last)
    current = _scored_with_features(demo_history, settings.model, lambda d: d == last)
    report = drift_report(reference, current, settings.model)
    assert set(report["metrics"]) == {m.name for m in settings.model.metrics}
    for name, d in report["metrics"].items():
        if d["inputs"] == "no warehouse":  # product-usage metrics: out of the model without a warehouse (engine/usage.py)
            assert name in {"session_trend", "product_engagement", "mta_engagement"}
            continue
        assert d["psi"] is not None and d["psi"] < 0.1, name
        assert d["inputs"] == "ok" and d["level"] == "stable"
    assert not [w for w in report["warnings"] if w.startswith("metric")]


def test_logins_zero_for_every_account_is_flagged_as_a_broken_integration(demo_history, settings):
    last = demo_history.accounts_history["as_of"].max()
    reference = _scored_with_features(demo_history, settings.model, lambda d: d < last)
    broken = demo_history.accounts_history.copy()
    broken.loc[broken["as_of"] == last, "logins_per_user_week"] = 0.0
    broken_history = type(demo_history)(broken, demo_history.tickets, demo_history.opportunities_history,
                                        demo_history.as_of_dates, demo_history.horizon_days)
    current = _scored_with_features(broken_history, settings.model, lambda d: d == last)
    report = drift_report(reference, current, settings.model)
    login = report["metrics"]["login_frequency"]
    assert login["inputs"] == "zero"
    assert login["psi"] > 0.25 and login["level"] == "significant"
    assert any("login_frequency" in w and "zero for every account" in w for w in report["warnings"])
    # the other metrics are untouched
    assert report["metrics"]["license_utilization"]["inputs"] == "ok"


def test_a_missing_column_and_a_crowded_band_are_warned(demo_history, settings):
    last = demo_history.accounts_history["as_of"].max()
    reference = _scored_with_features(demo_history, settings.model, lambda d: d < last)
    current = _scored_with_features(demo_history, settings.model, lambda d: d == last)
    current = current.drop(columns=["exec_sponsor"]).assign(m_exec_sponsor=np.nan, band="Red")
    report = drift_report(reference, current, settings.model)
    assert report["metrics"]["exec_sponsor"]["inputs"] == "missing"
    assert report["metrics"]["exec_sponsor"]["present_share"] == 0.0
    assert any("exec_sponsor" in w and "missing for every account" in w for w in report["warnings"])
    assert report["band_shares"] == {"Red": 1.0}
    assert any(w.startswith("band Red: 100%") for w in report["warnings"])


def test_without_a_reference_only_the_warnings_are_computed(demo_history, settings):
    last = demo_history.accounts_history["as_of"].max()
    current = _scored_with_features(demo_history, settings.model, lambda d: d == last)
    current = current.assign(days_payment_late=0)
    report = drift_report(None, current, settings.model)
    assert report["reference_rows"] == 0
    assert all(d["psi"] is None and d["level"] == "unknown" for d in report["metrics"].values())
    assert report["metrics"]["payment_timeliness"]["inputs"] == "zero"
    assert any("days_payment_late is zero" in w for w in report["warnings"])
