"""The Slack notifier against the Slack emulator: DM, channel, escaping, truncation, 429, secrets."""

from __future__ import annotations

import pytest

from healthsync.connectors.base import ConfigurationError
from healthsync.connectors.sandbox import Sandbox
from healthsync.connectors.sandbox.slack import DEFAULT_CHANNELS
from healthsync.connectors.slack import MAX_BLOCKS, MAX_SECTION_TEXT, SlackNotifier, SlackUserNotFoundError, escape_mrkdwn, slack_from_ready
from tests.connectors.conftest import FAST, accounts_only

SENTINEL = "xoxb-SENTINEL-5ec7e7-do-not-leak"


@pytest.fixture(scope="module")
def sb():
    # the emulator enforces Slack's one message per second per channel
    with Sandbox(portfolio=accounts_only(3, 2), seed=2) as sandbox:
        yield sandbox


def _owner_email(sb) -> str:
    return sb.records("salesforce", "User")[-1]["Email"]


def test_given_an_owner_email_when_posting_then_it_lands_in_their_dm(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    ts = notifier.post(user_email=_owner_email(sb), text="Acme is at risk")
    message = next(m for m in sb.slack_messages() if m["ts"] == ts)
    assert message["channel"].startswith("D") and message["text"] == "Acme is at risk"


def test_given_an_unknown_email_then_a_fallback_error_names_it(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    with pytest.raises(SlackUserNotFoundError, match="nobody@nowhere.example"):
        notifier.post(user_email="nobody@nowhere.example", text="x")


def test_given_crm_text_with_mentions_when_escaped_then_nobody_is_pinged(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    name = "<!channel> Acme & <@U123>"
    ts = notifier.post(channel="cs-escalations", text=f"Escalation: {escape_mrkdwn(name)}",
                       blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": f"*{escape_mrkdwn(name)}* missed its SLA"}}])
    message = next(m for m in sb.slack_messages() if m["ts"] == ts)
    assert message["channel_name"] == "#cs-escalations"
    for text in (message["text"], message["blocks"][0]["text"]["text"]):
        assert "<!channel>" not in text and "<@U123>" not in text and "&lt;!channel&gt;" in text


def test_given_oversized_blocks_when_posting_then_truncated_not_rejected(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "a" * 4000}}] + [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"row {i}"}} for i in range(70)
    ]
    ts = notifier.post(channel="revops", text="portfolio", blocks=blocks)
    message = next(m for m in sb.slack_messages() if m["ts"] == ts)
    assert len(message["blocks"]) == MAX_BLOCKS
    assert len(message["blocks"][0]["text"]["text"]) == MAX_SECTION_TEXT


def test_given_a_429_when_posting_then_retry_after_is_honoured_and_the_message_sent_once(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    seq = sb.requests()["last_seq"]
    sb.set_faults(api="slack", burst_429=2, retry_after=1)
    try:
        ts = notifier.post(channel="cs-leadership", text="one")
    finally:
        sb.clear_faults()
    log = sb.requests(since=seq, api="slack")["requests"]
    assert [r["status"] for r in log] == [429, 429, 200]
    assert notifier.stats.retries == 2
    assert [m["text"] for m in sb.slack_messages() if m["channel_name"] == "#cs-leadership"] == ["one"]
    assert ts


def test_given_a_bad_token_then_a_clear_error_without_the_token(sb, caplog):
    caplog.set_level("DEBUG")
    notifier = SlackNotifier(SENTINEL, base_url=sb.ready["slack"]["base_url"], retry=FAST)
    with pytest.raises(ConfigurationError, match="HEALTHSYNC__SLACK__BOT_TOKEN") as err:
        notifier.post(channel="general", text="hello")
    assert SENTINEL not in str(err.value) and SENTINEL not in caplog.text
    assert "SENTINEL" not in caplog.text


def test_given_dropped_connections_and_5xx_when_posting_then_each_message_is_sent_once(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    seq = sb.requests()["last_seq"]
    sent = {}
    sb.set_faults(api="slack", drop_rate=0.4, error_rate=0.4)  # decided before handling: nothing was posted
    try:
        for channel in DEFAULT_CHANNELS:  # one post per channel (1 message/s/channel), until both faults were met
            sent[channel] = notifier.post(channel=channel, text=f"drop test {channel}")
            if {"drop", "error"} <= {r["fault"] for r in sb.requests(since=seq, api="slack")["requests"]}:
                break
    finally:
        sb.clear_faults()
    assert {"drop", "error"} <= {r["fault"] for r in sb.requests(since=seq, api="slack")["requests"]}
    texts = [m["text"] for m in sb.slack_messages()]
    assert all(texts.count(f"drop test {c}") == 1 for c in sent) and len(set(sent.values())) == len(sent)
