"""Property tests: bounds, monotonicity, inclusive band minimums, missing never zero."""

import math

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from healthsync.config.model import ModelConfig
from healthsync.config.settings import load_settings
from healthsync.engine.scoring import HealthScorer

DEFAULT = load_settings().model
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

maybe = lambda strategy: st.one_of(st.none(), strategy)  # noqa: E731


@st.composite
def default_accounts(draw):
    """One account with every input of the default model, each possibly missing."""
    return {
        "account_id": "a",
        "segment": draw(st.sampled_from(["enterprise", "mid_market", "smb", None])),
        "logins_per_user_week": draw(maybe(st.floats(0, 50))),
        "features_used": draw(maybe(st.integers(0, 40))),
        "features_available": draw(maybe(st.integers(0, 40))),
        "active_users_30d": draw(maybe(st.integers(0, 500))),
        "seats_purchased": draw(maybe(st.integers(0, 500))),
        "qbrs_missed": draw(maybe(st.integers(0, 5))),
        "email_response_hours": draw(maybe(st.floats(0, 500))),
        "exec_sponsor": draw(st.sampled_from(["active", "partial", "none", None])),
        "tickets_rate_30d": draw(maybe(st.floats(0, 5))),
        "tickets_rate_90d": draw(maybe(st.floats(0, 5))),
        "escalations_90d": draw(maybe(st.integers(0, 10))),
        "days_payment_late": draw(maybe(st.integers(0, 200))),
        "csm_sentiment": draw(st.sampled_from(["green", "yellow", "red", None])),
        "tenure_days": draw(maybe(st.integers(0, 3000))),
        "days_to_renewal": draw(maybe(st.integers(-100, 700))),
    }


def frame(*rows) -> pd.DataFrame:
    out = pd.DataFrame(list(rows))
    for col in out.columns:
        if col not in ("account_id", "segment", "exec_sponsor", "csm_sentiment"):
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    return out


@FAST
@given(default_accounts())
def test_scores_stay_within_0_and_100(account):
    row = HealthScorer(DEFAULT).score(frame(account)).iloc[0]
    assert math.isnan(row["score"]) or 0.0 <= row["score"] <= 100.0
    assert 0.0 <= row["confidence"] <= 1.0 + 1e-9
    assert row["band"] in {b.name for b in DEFAULT.bands} | {DEFAULT.insufficient_band}


# "better" direction of each default input: +1 = more is better, -1 = less is better
BETTER = {
    "logins_per_user_week": +1,
    "features_used": +1,
    "active_users_30d": +1,
    "qbrs_missed": -1,
    "email_response_hours": -1,
    "escalations_90d": -1,
    "days_payment_late": -1,
}


@FAST
@given(default_accounts(), st.sampled_from(sorted(BETTER)), st.floats(0.01, 100))
def test_improving_one_metric_never_lowers_the_score(account, column, step):
    assume(account[column] is not None)
    better = dict(account)
    better[column] = max(0.0, account[column] + BETTER[column] * step)
    before, after = HealthScorer(DEFAULT).score(frame(account, better))["score"]
    assume(not math.isnan(before))
    assert after >= before


@st.composite
def identity_case(draw):
    k = draw(st.integers(2, 6))
    raw = draw(st.lists(st.floats(0.01, 1), min_size=k, max_size=k))
    weights = [w / sum(raw) for w in raw]
    weights[-1] = 1.0 - sum(weights[:-1])
    values = draw(st.lists(maybe(st.floats(0, 100)), min_size=k, max_size=k))
    return weights, values


def identity_model(weights, **extra) -> ModelConfig:
    return ModelConfig(
        metrics=[
            {"name": f"m{i}", "label": f"M{i}", "dimension": f"d{i % 2}", "weight": w,
             "rule": {"type": "identity", "column": f"c{i}"}}
            for i, w in enumerate(weights)
        ],
        bands=[{"name": "Red", "min": 0, "max": 40}, {"name": "Yellow", "min": 41, "max": 70},
               {"name": "Green", "min": 71, "max": 100}],
        confidence_floor=0.0,
        **extra,
    )


def identity_row(values):
    return {"account_id": "a", **{f"c{i}": (np.nan if v is None else v) for i, v in enumerate(values)}}


@FAST
@given(identity_case(), st.data())
def test_improving_any_identity_metric_never_lowers_the_score(case, data):
    weights, values = case
    present = [i for i, v in enumerate(values) if v is not None]
    assume(present)
    i = data.draw(st.sampled_from(present))
    better = list(values)
    better[i] = min(100.0, values[i] + data.draw(st.floats(0, 100)))
    scored = HealthScorer(identity_model(weights)).score(pd.DataFrame([identity_row(values), identity_row(better)]))
    assert scored["score"].iloc[1] >= scored["score"].iloc[0]


@FAST
@given(identity_case(), st.data())
def test_a_missing_metric_never_scores_as_zero(case, data):
    weights, values = case
    present = [i for i, v in enumerate(values) if v is not None]
    assume(len(present) >= 2)
    gone = data.draw(st.sampled_from(present))
    missing = list(values)
    missing[gone] = None
    row = HealthScorer(identity_model(weights)).score(pd.DataFrame([identity_row(missing)])).iloc[0]
    assert math.isnan(row[f"m_m{gone}"])  # absent, not 0
    kept = [i for i in present if i != gone]
    expected = sum(weights[i] * values[i] for i in kept) / sum(weights[i] for i in kept)
    assert abs(row["score"] - expected) <= 0.05 + 1e-9  # weight redistributed over the metrics present
    assert row["confidence"] == round(sum(weights[i] for i in kept), 4)
    as_zero = sum(weights[i] * values[i] for i in kept)  # what counting it as 0 would give
    assert row["score"] >= math.floor(as_zero * 10) / 10


@FAST
@given(st.integers(1, 99).map(float), st.integers(1, 99).map(float))
def test_band_minimums_are_inclusive(a, b):
    low, high = sorted((a, b))
    assume(high > low)
    model = ModelConfig(
        metrics=[{"name": "m", "label": "M", "dimension": "d", "weight": 1.0, "rule": {"type": "identity", "column": "v"}}],
        bands=[{"name": "Red", "min": 0, "max": low - 1}, {"name": "Yellow", "min": low, "max": high - 1},
               {"name": "Green", "min": high, "max": 100}],
        csm_override={"enabled": False},
    )
    values = [0.0, low - 0.1, low, high - 0.1, high, 100.0]
    bands = HealthScorer(model).score(pd.DataFrame({"account_id": list("abcdef"), "v": values}))["band"].tolist()
    assert bands == ["Red", "Red", "Yellow", "Yellow", "Green", "Green"]


def test_documented_default_boundaries():
    # config/model.py: 40.9 is Red and 41.0 Yellow; 70.9 Yellow and 71.0 Green
    model = identity_model([1.0])
    scored = HealthScorer(model.model_copy(update={"csm_override": model.csm_override.model_copy(update={"enabled": False})}))
    bands = scored.score(pd.DataFrame({"account_id": list("abcd"), "c0": [40.9, 41.0, 70.9, 71.0]}))["band"].tolist()
    assert bands == ["Red", "Yellow", "Yellow", "Green"]
