"""The demo portfolio: canonical, deterministic, realistic in shape, and able to carry bad records on request."""

import re
from datetime import date

import numpy as np
import pandas as pd
import pytest

from healthsync.config.canonical import ACCOUNTS, OPPORTUNITIES, TICKETS, validate_frame
from healthsync.connectors.demo_data import STAGES, generate_portfolio, write_portfolio

SPECS = {"accounts": ACCOUNTS, "opportunities": OPPORTUNITIES, "tickets": TICKETS}


def test_given_same_seed_when_generated_twice_then_frames_are_identical():
    first, second = generate_portfolio(800, seed=3), generate_portfolio(800, seed=3)
    for name in ("accounts", "opportunities", "tickets", "owners"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    other = generate_portfolio(800, seed=4)
    assert not first.accounts["arr"].equals(other.accounts["arr"])


@pytest.mark.parametrize("name", ["accounts", "opportunities", "tickets"])
def test_frames_pass_the_canonical_validator_unchanged(portfolio, name):
    frame, spec = getattr(portfolio, name), SPECS[name]
    extra = ["domain"] if name == "accounts" else []
    assert list(frame.columns) == spec.names + extra
    cleaned, report = validate_frame(frame, spec)
    assert report.lines(5) == []
    assert len(cleaned) == len(frame)
    for column in spec.names:
        assert cleaned[column].dtype == frame[column].dtype, column
        pd.testing.assert_series_equal(cleaned[column], frame[column], check_names=False)


def test_accounts_have_neutral_ids_domains_and_the_segment_mix(portfolio):
    a = portfolio.accounts
    assert a["account_id"].iloc[0] == "A0000001" and a["account_id"].is_unique
    assert a["domain"].str.fullmatch(r"[a-z]+-\d{6}\.example\.com").all()
    share = a["segment"].value_counts(normalize=True)
    assert share["enterprise"] == pytest.approx(0.15, abs=0.03)
    assert share["mid_market"] == pytest.approx(0.35, abs=0.03)
    assert share["smb"] == pytest.approx(0.50, abs=0.03)
    arr = a.groupby("segment")["arr"].median()
    assert arr["enterprise"] > 3 * arr["mid_market"] > 3 * arr["smb"]
    assert (a["active_users_30d"] <= a["seats_purchased"]).all()
    assert (a["features_used"] <= a["features_available"]).all()
    assert set(a["qbrs_missed"].unique()) >= {0, 1, 2}
    assert set(a["exec_sponsor"].unique()) == {"active", "partial", "none"}
    assert (a["days_payment_late"] > 30).any() and (a["days_payment_late"] == 0).mean() > 0.6


def test_accounts_have_realistic_gaps_and_lifecycle_spread(portfolio):
    a, as_of = portfolio.accounts, pd.Timestamp(portfolio.as_of)
    assert 0.2 < a["nps"].isna().mean() < 0.4
    assert 0.05 < a["csm_sentiment"].isna().mean() < 0.25
    tenure = (as_of - a["customer_since"]).dt.days
    assert tenure.min() >= 0 and tenure.max() <= 6 * 365
    assert 0.04 < (tenure < 90).mean() < 0.12
    to_renewal = (a["renewal_date"] - as_of).dt.days
    assert to_renewal.between(1, 365).all()
    assert 0.1 < (to_renewal <= 60).mean() < 0.25


def test_owners_form_a_hierarchy_and_own_every_account(portfolio):
    owners, a = portfolio.owners, portfolio.accounts
    assert list(owners.columns) == ["email", "name", "role", "manager_email"]
    roles = owners["role"].value_counts()
    assert roles["csm"] == round(3000 / 40) and roles["manager"] == 13 and roles["vp"] == 1
    assert owners["email"].is_unique
    assert owners["email"].str.fullmatch(r"[a-z]+\.[a-z]+\d*@example\.com").all()
    by_email = owners.set_index("email")["role"]
    csm = owners[owners["role"] == "csm"]
    assert (csm["manager_email"].map(by_email) == "manager").all()
    assert (owners.loc[owners["role"] == "manager", "manager_email"].map(by_email) == "vp").all()
    assert owners.loc[owners["role"] == "vp", "manager_email"].isna().all()
    assert set(a["owner_email"]) == set(csm["email"])
    assert a["owner_email"].value_counts().between(30, 50).all()


def test_given_small_book_then_at_least_three_csms():
    owners = generate_portfolio(10, seed=1).owners
    assert (owners["role"] == "csm").sum() == 3


def test_opportunities_follow_stages_and_close_dates(portfolio):
    o, as_of = portfolio.opportunities, pd.Timestamp(portfolio.as_of)
    assert len(o) / len(portfolio.accounts) == pytest.approx(5.0, rel=0.08)
    assert set(o["account_id"]) <= set(portfolio.accounts["account_id"])
    base = {name: p for name, p, _ in STAGES}
    category = {name: c for name, _, c in STAGES}
    assert (o["probability"] == o["stage"].map(base)).all()
    assert (o["forecast_category"] == o["stage"].map(category)).all()
    closed, open_ = o[o["is_closed"]], o[~o["is_closed"]]
    assert 0.1 < len(closed) / len(o) < 0.3
    assert (closed["is_won"] == (closed["stage"] == "Closed Won")).all()
    assert (closed["close_date"] < as_of).all()
    assert (~open_["is_won"]).all() and (open_["close_date"] > as_of).all()
    assert (open_["close_date"] <= as_of + pd.Timedelta(days=270)).all()
    assert set(o["type"]) == {"new_business", "renewal", "expansion"}
    owner = portfolio.accounts.set_index("account_id")["owner_email"]
    assert (o["owner_email"] == o["account_id"].map(owner)).all()


def test_tickets_cover_the_trailing_180_days(portfolio):
    t, as_of = portfolio.tickets, pd.Timestamp(portfolio.as_of)
    assert len(t) / len(portfolio.accounts) == pytest.approx(10.0, rel=0.1)
    assert t["created_at"].between(as_of - pd.Timedelta(days=180), as_of).all()
    closed = t["status"] == "closed"
    assert (t.loc[closed, "closed_at"] >= t.loc[closed, "created_at"]).all()
    assert (t.loc[closed, "closed_at"] <= as_of).all()
    assert t.loc[~closed, "closed_at"].isna().all() and (~closed).any()
    share = t["priority"].value_counts(normalize=True)
    assert share["P1"] < share["P2"] < share["P3"]
    assert 0.03 < t["escalated"].mean() < 0.2


def test_healthier_accounts_win_more_closed_deals(portfolio):
    a = portfolio.accounts.set_index("account_id")
    util = a["active_users_30d"].astype(float) / a["seats_purchased"].astype(float)
    closed = portfolio.opportunities[portfolio.opportunities["is_closed"]]
    high = closed["account_id"].map(util) > util.median()
    win_high, win_low = closed.loc[high, "is_won"].mean(), closed.loc[~high, "is_won"].mean()
    assert win_high > win_low + 0.05


def test_given_bad_records_then_validator_reports_one_problem_per_kind():
    p = generate_portfolio(200, seed=2, inject_bad_records=5)
    assert len(p.accounts) == 205
    cleaned, report = validate_frame(p.accounts, ACCOUNTS)
    messages = sorted(f"{x.column}: {x.message}" for x in report.problems)
    assert len(messages) == 5, messages
    kinds = [
        ("account_id: missing", True),
        ("account_id: duplicate id", True),
        ("arr: ", False),
        ("customer_since: unparsable date", False),
        ("exec_sponsor: unknown value 'sometimes'", False),
    ]
    for prefix, dropped in kinds:
        hits = [x for x in report.problems if f"{x.column}: {x.message}".startswith(prefix)]
        assert len(hits) == 1, prefix
        assert hits[0].dropped is dropped
    assert "below the minimum" in next(x.message for x in report.problems if x.column == "arr")
    # missing id drops the row, the duplicate drops both copies
    assert len(cleaned) == 205 - 1 - 2


def test_clean_portfolio_has_no_bad_records_and_rejects_empty_book():
    with pytest.raises(ValueError, match="n_accounts"):
        generate_portfolio(0)
    p = generate_portfolio(1, seed=0, as_of=date(2025, 6, 30))
    assert len(p.accounts) == 1 and p.as_of == date(2025, 6, 30)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_portfolio_files_round_trip(tmp_path, fmt):
    p = generate_portfolio(300, seed=9)
    paths = write_portfolio(p, tmp_path, fmt=fmt)
    assert sorted(x.name for x in paths.values()) == sorted(
        f"{n}.{fmt}" for n in ("accounts", "opportunities", "tickets", "owners")
    )
    for name, spec in SPECS.items():
        path = tmp_path / f"{name}.{fmt}"
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""]) if fmt == "csv" else pd.read_parquet(path)
        back, report = validate_frame(raw, spec)
        assert report.lines(5) == []
        original = getattr(p, name)
        for column in spec.names:
            pd.testing.assert_series_equal(back[column], original[column], check_names=False, check_dtype=False)
    if fmt == "csv":
        text = (tmp_path / "accounts.csv").read_text().splitlines()[1]
        assert re.search(r"\b\d{4}-\d{2}-\d{2}\b", text) and "00:00:00" not in text
        assert re.search(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", (tmp_path / "tickets.csv").read_text())
