"""Trigger evaluation on hand-built score frames: the seeds' four playbooks and the condition language."""

from datetime import datetime, timezone

import pandas as pd
import pytest

from healthsync.config.settings import load_settings
from healthsync.playbooks.definitions import load_playbooks
from healthsync.playbooks.triggers import ConditionError, holds, parse_condition, prepare_frame

NOW = datetime(2026, 11, 25, 6, 0, tzinfo=timezone.utc)


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "account_id": ["sf:red", "sf:49", "sf:50", "sf:drop15", "sf:drop14", "sf:80", "sf:79", "sf:renew60", "sf:renew61", "sf:renew_ok", "sf:nascore", "sf:renewed"],
            "score": [45, 49.9, 50, 65, 65, 80, 79.9, 69, 69, 70, None, 60],
            "band": ["Red", "Yellow", "Yellow", "Yellow", "Yellow", "Green", "Green", "Yellow", "Yellow", "Yellow", "Insufficient data", "Yellow"],
            "delta_30d": [0, 0, 0, -15, -14.9, 0, 0, 0, 0, 0, None, 0],
            "renewal_date": [None, None, None, None, None, None, None, "2027-01-24", "2027-01-25", "2027-01-01", "2027-01-01", "2026-11-24"],
        }
    )


@pytest.fixture(scope="module")
def playbooks():
    return {p.name: p for p in load_playbooks(load_settings(environ={})).playbooks}


def triggered(playbook, scores=None) -> list[str]:
    f = prepare_frame(frame() if scores is None else scores, NOW)
    return f.loc[holds(playbook.condition, f), "account_id"].tolist()


def test_given_red_or_below_50_when_evaluated_then_at_risk_triggers(playbooks):
    # Red band (45) and 49.9 trigger; exactly 50 (Yellow) does not (seed 001: "drops below 50")
    assert triggered(playbooks["at_risk_intervention"]) == ["sf:red", "sf:49"]


def test_given_a_drop_of_15_points_when_evaluated_then_rapid_decline_triggers_but_not_at_14_9(playbooks):
    assert triggered(playbooks["rapid_decline"]) == ["sf:drop15"]


def test_given_score_80_when_evaluated_then_expansion_triggers_but_not_at_79_9(playbooks):
    assert triggered(playbooks["expansion_opportunity"]) == ["sf:80"]


def test_given_renewal_within_60_days_and_score_under_70_then_renewal_risk(playbooks):
    # 2026-11-25 + 60 days = 2027-01-24 (inside), 2027-01-25 is 61 days (outside); score 70 is not < 70;
    # a renewal date already passed is not "within 60 days"
    assert triggered(playbooks["renewal_risk"]) == ["sf:renew60"]


def test_given_missing_score_then_no_playbook_fires_even_under_not():
    cond = parse_condition({"not": {"score_gte": 80}}, "t")
    f = prepare_frame(frame(), NOW)
    hit = set(f.loc[holds(cond, f), "account_id"])
    assert "sf:nascore" not in hit and "sf:49" in hit


def test_given_column_absent_from_frame_then_condition_is_unknown_not_true():
    cond = parse_condition({"not": {"delta_90d_lt": -10}}, "t")
    f = prepare_frame(frame(), NOW)
    assert not holds(cond, f).any()


def test_text_membership_and_negation():
    f = prepare_frame(frame(), NOW)
    cond = parse_condition({"all": [{"band_not_in": ["Red", "Green"]}, {"score_gt": 60}]}, "t")
    assert f.loc[holds(cond, f), "account_id"].tolist() == ["sf:drop15", "sf:drop14", "sf:renew60", "sf:renew61", "sf:renew_ok"]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"scor_lt": 50}, "t.scor_lt: unknown column 'scor'"),
        ({"score_below": 50}, "t.score_below: unknown condition"),
        ({"band_lt": "Red"}, "t.band_lt: lt needs a numeric column"),
        ({"score_lt": "fifty"}, "t.score_lt: expected a number"),
        ({"any": []}, "t.any: expected a non-empty list"),
        ({"all": [{"score_lt": 50}, {"band_in": "Red"}]}, "t.all.1.band_in: expected a non-empty list"),
        ({"score_lt": 50, "band_in": ["Red"]}, "t: a condition is a mapping with exactly one key"),
    ],
)
def test_bad_conditions_name_the_key_path(raw, message):
    with pytest.raises(ConditionError) as e:
        parse_condition(raw, "t")
    assert str(e.value).startswith(message)
