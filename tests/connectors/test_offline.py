"""Connector pieces that need no emulator: retry policy, files, identity, Slack block limits, redaction."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from healthsync.connectors.base import CallStats, ConfigurationError, RetryableError
from healthsync.connectors.files import read_frame, read_frames, read_history, write_frame
from healthsync.connectors.identity import match_accounts, normalize_domain
from healthsync.connectors.redact import Redactor
from healthsync.connectors.retry import RetryPolicy
from healthsync.connectors.slack import ELLIPSIS, MAX_BLOCKS, MAX_SECTION_TEXT, escape_mrkdwn, fit_blocks

FAST = RetryPolicy(max_attempts=4, max_total_seconds=5, base_wait=0.001, max_wait=0.01, timeout=5)


def test_given_transient_errors_when_called_then_retried_and_counted():
    stats = CallStats()
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RetryableError("503")
        return "done"

    assert FAST.call(flaky, stats=stats) == "done"
    assert len(calls) == 3 and stats.retries == 2


def test_given_retry_after_when_retrying_then_it_is_waited():
    calls = []

    def limited():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RetryableError("429", retry_after=0.2)
        return 1

    FAST.call(limited)
    assert calls[1] - calls[0] >= 0.19


def test_given_persistent_errors_when_attempts_run_out_then_last_error_raised():
    calls = []

    def down():
        calls.append(1)
        raise RetryableError("502")

    with pytest.raises(RetryableError):
        FAST.call(down)
    assert len(calls) == FAST.max_attempts


def test_given_non_retryable_error_then_no_retry():
    calls = []

    def bad():
        calls.append(1)
        raise ValueError("bad")

    with pytest.raises(ValueError):
        FAST.call(bad)
    assert len(calls) == 1


def test_given_retry_after_beyond_cap_then_gives_up_at_once():
    calls = []

    def limited():
        calls.append(1)
        raise RetryableError("429", retry_after=3600)

    with pytest.raises(RetryableError):
        RetryPolicy(max_retry_after=1).call(limited)
    assert len(calls) == 1


def test_redactor_masks_plain_and_url_encoded_secret():
    secret = "s3cr3t/+token=="
    r = Redactor([secret])
    from urllib.parse import quote_plus

    assert "s3cr3t" not in r(f"failed: {secret} and {quote_plus(secret)}")


def test_escape_mrkdwn_neutralises_mentions():
    assert escape_mrkdwn("<!channel> Acme & <@U123>") == "&lt;!channel&gt; Acme &amp; &lt;@U123&gt;"


def test_fit_blocks_truncates_sections_and_block_count():
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 5000}}] + [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"row {i}"}} for i in range(80)
    ]
    fitted = fit_blocks(blocks)
    assert len(fitted) == MAX_BLOCKS
    assert len(fitted[0]["text"]["text"]) == MAX_SECTION_TEXT and fitted[0]["text"]["text"].endswith(ELLIPSIS)
    assert "32 more not shown" in fitted[-1]["elements"][0]["text"]
    assert len(blocks[0]["text"]["text"]) == 5000  # input untouched


def test_files_round_trip_csv_and_parquet_keeps_ids_and_custom_columns(tmp_path):
    accounts = pd.DataFrame(
        {
            "account_id": ["001", "002", "003"],
            "arr": [1000.0, -5, 300],
            "segment": ["smb", "enterprise", None],
            "renewal_date": ["2026-01-01", "not a date", None],
            "product_usage_score": [0.5, 0.7, 0.9],
        }
    )
    for suffix in ("csv", "parquet"):
        write_frame(accounts, tmp_path / suffix / f"accounts.{suffix}")
        frames, report = read_frames(tmp_path / suffix)
        got = frames["accounts"]
        assert list(got["account_id"]) == ["001", "002", "003"]
        assert got["product_usage_score"].tolist() == [0.5, 0.7, 0.9]
        assert pd.isna(got.loc[1, "arr"]) and got.loc[0, "arr"] == 1000.0
        lines = report.lines()
        assert any("002" in l and "arr" in l for l in lines)
        assert any("002" in l and "renewal_date" in l for l in lines)


def test_read_frames_requires_accounts(tmp_path):
    with pytest.raises(ConfigurationError, match="accounts"):
        read_frames(tmp_path)


def test_read_frame_rejects_unknown_suffix(tmp_path):
    p = tmp_path / "accounts.xlsx"
    p.write_text("x")
    with pytest.raises(ConfigurationError, match="unsupported"):
        read_frame(p, "accounts")


def test_read_history_reads_both_required_files(tmp_path):
    write_frame(pd.DataFrame({"account_id": ["a", "b"], "as_of": ["2025-01-01", "2025-01-01"], "churned": [0, 1]}), tmp_path / "accounts_history.csv")
    write_frame(pd.DataFrame({"ticket_id": ["t1"], "account_id": ["a"], "priority": ["P1"]}), tmp_path / "tickets.parquet")
    frames, report = read_history(tmp_path)
    assert set(frames) == {"accounts_history", "tickets"}
    assert frames["accounts_history"]["churned"].tolist() == [0, 1]
    assert not report


def test_match_accounts_by_domain_keeps_and_reports_unmatched():
    sf = pd.DataFrame({"account_id": ["sf:001A", "sf:001B", "sf:001C", "sf:001D"],
                       "domain": ["https://www.Acme.com/x", "beta.io", None, "gamma.com"]})
    hs = pd.DataFrame({"account_id": ["hs:1", "hs:2", "hs:3", "hs:4"], "domain": ["acme.com", "delta.io", "gamma.com", "gamma.com"]})
    pairs, report = match_accounts(sf, hs, "domain")
    assert pairs.to_dict("records") == [{"salesforce_id": "sf:001A", "hubspot_id": "hs:1", "key": "acme.com"}]
    assert report.unmatched_salesforce == ["sf:001B", "sf:001C", "sf:001D"]
    assert report.unmatched_hubspot == ["hs:2", "hs:3", "hs:4"]
    assert any("gamma.com" in line for line in report.ambiguous)


def test_match_accounts_by_salesforce_id_accepts_15_and_18_char_ids():
    sf = pd.DataFrame({"account_id": ["sf:001000000000001AAA", "sf:001000000000002AAA"]})
    hs = pd.DataFrame({"account_id": ["hs:9"], "salesforce_account_id": ["001000000000001"]})
    pairs, report = match_accounts(sf, hs, "salesforce_id")
    assert pairs[["salesforce_id", "hubspot_id"]].values.tolist() == [["sf:001000000000001AAA", "hs:9"]]
    assert report.unmatched_salesforce == ["sf:001000000000002AAA"]


def test_match_accounts_names_bad_key():
    with pytest.raises(ConfigurationError, match="match_on"):
        match_accounts(pd.DataFrame({"account_id": []}), pd.DataFrame({"account_id": []}), "email")


def test_normalize_domain():
    assert normalize_domain(pd.Series(["HTTP://WWW.X.COM:8080/a", " ", "y.org."])).tolist()[0] == "x.com"
