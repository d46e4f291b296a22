"""The demo history: outcomes follow the documented hidden mechanism, strongly enough to validate a model."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve, roc_auc_score

from healthsync.config.canonical import ACCOUNTS, ACCOUNTS_HISTORY, OPPORTUNITIES_HISTORY, TICKETS, validate_frame
from healthsync.connectors.demo_data import generate_history, read_history, write_history
from seed003_model import default_score, metric_scores, ticket_features


@pytest.fixture(scope="module")
def scored(history):
    """Accounts history with trailing ticket features, the seed-003 metric scores and default score."""
    a = ticket_features(history.accounts_history, history.tickets)
    scores = metric_scores(a)
    a["score"] = default_score(scores).to_numpy()
    return a, scores


def test_given_same_seed_when_generated_twice_then_history_is_identical():
    first, second = generate_history(500, seed=8, snapshots=3), generate_history(500, seed=8, snapshots=3)
    for name in ("accounts_history", "tickets", "opportunities_history"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    assert first.as_of_dates == second.as_of_dates


def test_history_frames_pass_the_canonical_validator(history):
    for frame, spec in (
        (history.accounts_history, ACCOUNTS_HISTORY),
        (history.tickets, TICKETS),
        (history.opportunities_history, OPPORTUNITIES_HISTORY),
    ):
        assert [c for c in frame.columns if c in spec.names] == spec.names
        cleaned, report = validate_frame(frame, spec)
        assert report.lines(5) == [] and len(cleaned) == len(frame)
        for column in spec.names:
            assert cleaned[column].dtype == frame[column].dtype, column


def test_snapshots_are_spaced_and_churn_rate_is_between_5_and_25_percent(history):
    a = history.accounts_history
    dates = sorted(a["as_of"].unique())
    assert len(dates) == 6 and [d.date() for d in dates] == history.as_of_dates
    assert {(b - c).days for b, c in zip(dates[1:], dates[:-1])} == {90}
    rate = a.groupby("as_of")["churned"].mean()
    assert rate.between(0.05, 0.25).all(), rate.to_dict()
    assert rate.mean() == pytest.approx(0.12, abs=0.04)


def test_churned_accounts_leave_later_snapshots_and_new_customers_join(history):
    a = history.accounts_history
    dates = sorted(a["as_of"].unique())
    sizes = a.groupby("as_of").size()
    assert sizes.min() > 0.85 * sizes.iloc[0] and sizes.max() < 1.15 * sizes.iloc[0]
    for earlier, later in zip(dates[:-1], dates[1:]):
        before = a[a["as_of"] == earlier].set_index("account_id")["churned"]
        now = a[a["as_of"] == later]
        joined = now["customer_since"] > earlier
        assert joined.sum() > 0 and set(now.loc[~joined, "account_id"]) <= set(before.index)
        assert not set(now.loc[joined, "account_id"]) & set(before.index)
        gone = before.index.difference(list(now["account_id"]))
        assert len(gone) > 0 and (before[gone] == 1).all()
    # and an account flagged churned never stays for more than horizon_days
    last_seen = a.groupby("account_id")["as_of"].max()
    flagged = a[a["churned"] == 1].groupby("account_id")["as_of"].min()
    assert ((last_seen[flagged.index] - flagged).dt.days <= history.horizon_days).all()


def test_signals_carry_the_expected_direction(scored):
    a, _ = scored
    churned, kept = a[a["churned"] == 1], a[a["churned"] == 0]

    def util(f):
        return (f["active_users_30d"].astype(float) / f["seats_purchased"].astype(float)).mean()

    assert churned["logins_per_user_week"].mean() < 0.75 * kept["logins_per_user_week"].mean()
    assert util(churned) < util(kept) - 0.1
    assert churned["features_used"].mean() / churned["features_available"].mean() < (
        kept["features_used"].mean() / kept["features_available"].mean() - 0.05
    )
    assert churned["days_payment_late"].mean() > 2 * kept["days_payment_late"].mean()
    assert churned["escalations_90d"].mean() > 2 * kept["escalations_90d"].mean()
    assert churned["qbrs_missed"].mean() > kept["qbrs_missed"].mean() + 0.3
    assert (churned["exec_sponsor"] == "none").mean() > (kept["exec_sponsor"] == "none").mean() + 0.1
    assert (churned["csm_sentiment"] == "red").mean() > (kept["csm_sentiment"] == "red").mean() + 0.1
    trend = lambda f: (f["tickets_30d"] / (f["tickets_90d"] / 3).clip(lower=1)).mean()  # noqa: E731
    assert trend(churned) > trend(kept) + 0.1


def test_default_model_ranks_churn_but_a_calibrated_one_does_better(scored):
    """Seed-003 weights reach AUC >= 0.75; weights learned on earlier snapshots beat them on later ones."""
    a, scores = scored
    y = a["churned"].astype(int).to_numpy()
    assert roc_auc_score(y, -a["score"]) >= 0.75
    train = (a["as_of"] <= sorted(a["as_of"].unique())[3]).to_numpy()
    x = scores.fillna(50.0).to_numpy()
    learned = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    auc_learned = roc_auc_score(y[~train], learned.predict_proba(x[~train])[:, 1])
    auc_default = roc_auc_score(y[~train], -a["score"].to_numpy()[~train])
    assert auc_learned >= 0.80
    assert auc_learned > auc_default + 0.01
    # issue 7's operational target is reachable: 75% recall at >= 60% precision on the held-out periods
    balanced = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x[train], y[train])
    precision, recall, _ = precision_recall_curve(y[~train], balanced.decision_function(x[~train]))
    assert precision[recall >= 0.75].max() >= 0.65
    weight = dict(zip(scores.columns, -learned.coef_[0]))
    assert abs(weight["email"]) < 0.25 * weight["license"]  # the hidden mechanism ignores email response
    assert weight["license"] > weight["login"]


def test_health_adjusted_forecast_beats_stage_probabilities(history, scored):
    a, _ = scored
    o = history.opportunities_history.merge(a[["account_id", "as_of", "score"]], on=["account_id", "as_of"])
    assert len(o) == len(history.opportunities_history)
    assert ((o["won_amount"] == o["amount"]) == (o["won"] == 1)).all() and (o.loc[o["won"] == 0, "won_amount"] == 0).all()
    band = np.select([o["score"] <= 30, o["score"] <= 70], [0, 1], 2)
    ratio = o.groupby(band)["won"].mean() / o.groupby(band)["probability"].mean()
    assert ratio[0] < 0.7 < ratio[1] < ratio[2] and ratio[2] > 1.15
    # seed 000 band multipliers At-Risk 0.6 / Neutral 1.0 / Healthy 1.4, per snapshot (forecast period)
    adjusted = o["amount"] * np.clip(o["probability"] * np.array([0.6, 1.0, 1.4])[band], 0, 1)
    base = o["amount"] * o["probability"]
    per = pd.DataFrame({"as_of": o["as_of"], "base": base, "adjusted": adjusted, "actual": o["won_amount"]})
    per = per.groupby("as_of").sum()
    mape = lambda f: (abs(per["actual"] - per[f]) / per["actual"]).mean()  # noqa: E731
    assert mape("adjusted") <= 0.75 * mape("base")


def test_tickets_span_the_history_and_differ_between_snapshots(history, scored):
    a, _ = scored
    t, first, last = history.tickets, pd.Timestamp(history.as_of_dates[0]), pd.Timestamp(history.as_of_dates[-1])
    assert t["created_at"].min() >= first - pd.Timedelta(days=180)
    assert t["created_at"].max() <= last
    assert t["ticket_id"].is_unique and set(t["account_id"]) <= set(a["account_id"])
    wide = a.pivot(index="account_id", columns="as_of", values="tickets_30d").dropna()
    assert (wide.nunique(axis=1) > 1).mean() > 0.5
    per_snapshot = a.groupby("as_of")["tickets_90d"].mean()
    assert per_snapshot.between(3.0, 8.0).all(), per_snapshot.to_dict()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="snapshots"):
        generate_history(10, snapshots=0)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_history_files_round_trip(tmp_path, fmt):
    h = generate_history(400, seed=4, snapshots=3)
    paths = write_history(h, tmp_path, fmt=fmt)
    assert sorted(p.name for p in paths.values()) == sorted(
        f"{n}.{fmt}" for n in ("accounts_history", "tickets", "opportunities_history")
    )
    back, problems = read_history(tmp_path, fmt=fmt)
    assert problems == []
    assert back.as_of_dates == h.as_of_dates
    for name, spec in (
        ("accounts_history", ACCOUNTS_HISTORY),
        ("tickets", TICKETS),
        ("opportunities_history", OPPORTUNITIES_HISTORY),
    ):
        for column in spec.names:
            pd.testing.assert_series_equal(
                getattr(back, name)[column], getattr(h, name)[column], check_names=False, check_dtype=False
            )
    assert list(back.accounts_history.columns[: len(ACCOUNTS.names)]) == ACCOUNTS.names


@pytest.mark.parametrize("interval_days, horizon_days", [(30, 90), (180, 180)])
def test_given_other_spacings_then_churn_rate_stays_plausible(interval_days, horizon_days):
    h = generate_history(3000, seed=1, snapshots=3, interval_days=interval_days, horizon_days=horizon_days)
    rate = h.accounts_history.groupby("as_of")["churned"].mean()
    assert rate.between(0.03, 0.25).all(), rate.to_dict()
    dates = sorted(h.accounts_history["as_of"].unique())
    assert {(b - a).days for a, b in zip(dates[:-1], dates[1:])} == {interval_days}
