"""The canonical validator collects per-record problems instead of raising."""

import pandas as pd

from healthsync.config.canonical import ACCOUNTS, TICKETS, validate_frame


def accounts(rows):
    return pd.DataFrame(rows)


GOOD = dict(account_id="A1", name="Acme", segment="smb", arr="1200.5", seats_purchased="10",
            active_users_30d=7, exec_sponsor="Active", customer_since="2024-01-31", renewal_date="2027-01-31")


def test_given_one_of_each_bad_record_when_validated_then_each_is_reported_and_the_rest_kept():
    rows = [
        GOOD,
        {**GOOD, "account_id": None, "name": "no id"},
        {**GOOD, "account_id": "A2"},
        {**GOOD, "account_id": "A2", "name": "dup"},
        {**GOOD, "account_id": "A3", "arr": -5},
        {**GOOD, "account_id": "A4", "renewal_date": "31/31/2026"},
        {**GOOD, "account_id": "A5", "exec_sponsor": "sometimes"},
    ]
    clean, report = validate_frame(accounts(rows), ACCOUNTS)
    text = "\n".join(report.lines())
    # dropped: missing id and both copies of the duplicate
    assert sorted(clean["account_id"]) == ["A1", "A3", "A4", "A5"]
    assert "account_id: missing (record skipped)" in text
    assert "A2: account_id: duplicate id (record skipped)" in text
    # kept with the bad value cleared (absent, never zero)
    assert "A3: arr: -5 is below the minimum 0 (value ignored)" in text
    assert "A4: renewal_date: unparsable date '31/31/2026'" in text
    assert "A5: exec_sponsor: unknown value 'sometimes'" in text
    row = clean.set_index("account_id")
    assert pd.isna(row.loc["A3", "arr"]) and pd.isna(row.loc["A4", "renewal_date"]) and pd.isna(row.loc["A5", "exec_sponsor"])
    # coerced to the contract's types, enum normalised to lower case
    assert row.loc["A1", "arr"] == 1200.5 and row.loc["A1", "seats_purchased"] == 10
    assert row.loc["A1", "exec_sponsor"] == "active"
    assert row.loc["A1", "renewal_date"] == pd.Timestamp("2027-01-31")


def test_given_extra_columns_when_validated_then_they_pass_through_untouched():
    clean, report = validate_frame(accounts([{**GOOD, "product_usage_score": "77"}]), ACCOUNTS)
    assert not report
    assert clean.loc[0, "product_usage_score"] == "77"


def test_given_a_frame_without_the_id_column_then_one_problem_names_it():
    clean, report = validate_frame(pd.DataFrame([{"name": "x"}]), ACCOUNTS)
    assert clean.empty and len(report) == 1
    assert "account_id: required column is missing" in report.lines()[0]


def test_ticket_priority_and_booleans_are_normalised():
    rows = [dict(ticket_id="T1", account_id="A1", priority="p1", status="OPEN", escalated="true", created_at="2026-01-01T10:00:00Z"),
            dict(ticket_id="T2", account_id="A1", priority="P9", status="closed", escalated="maybe")]
    clean, report = validate_frame(pd.DataFrame(rows), TICKETS)
    assert list(clean["priority"].astype(object).where(clean["priority"].notna(), None)) == ["P1", None]
    assert list(clean["status"]) == ["open", "closed"]
    assert clean.loc[0, "escalated"] == True  # noqa: E712
    assert pd.isna(clean.loc[1, "escalated"])
    assert {p.column for p in report.problems} == {"priority", "escalated"}
