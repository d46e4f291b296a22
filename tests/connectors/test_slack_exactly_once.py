"""A keyed Slack post lands exactly once even when Slack applies it and the answer is lost.

Everything runs the official slack_sdk client against the Slack emulator, whose
`lost_response_rate` applies chat.postMessage and then closes the connection.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from healthsync.connectors.base import RetryableError
from healthsync.connectors.sandbox import Sandbox
from healthsync.connectors.slack import METADATA_EVENT_TYPE, SlackDeliveryUncertainError, slack_from_ready
from tests.connectors.conftest import FAST, accounts_only


@pytest.fixture(scope="module")
def sb():
    # no per-channel pacing: a blind retry must be able to land a second copy, so the tests can see one
    with Sandbox(portfolio=accounts_only(3, 2), seed=11, slack_message_interval_s=0.0) as sandbox:
        yield sandbox


def _landed(sb, text: str) -> list[dict]:
    return [m for m in sb.slack_messages() if m["text"] == text]


def _endpoints(sb, since: int) -> list[tuple[str, str | None]]:
    return [(r["endpoint"], r["fault"]) for r in sb.requests(since=since, api="slack")["requests"]]


def test_given_a_lost_answer_when_posting_with_a_key_then_one_message_and_its_ts(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    seq = sb.requests()["last_seq"]
    sb.set_faults(api="slack", lost_response_rate=1.0)
    try:
        ts = notifier.post(channel="cs-escalations", text="Acme missed its SLA", idempotency_key="ep-1|manager|escalation")
    finally:
        sb.clear_faults()
    landed = _landed(sb, "Acme missed its SLA")
    assert len(landed) == 1
    assert ts == landed[0]["ts"]
    assert landed[0]["metadata"] == {"event_type": METADATA_EVENT_TYPE, "event_payload": {"key": "ep-1|manager|escalation"}}
    # the post was applied and its answer lost; the retry read history instead of posting again
    assert _endpoints(sb, seq) == [("chat.postMessage", "lost_response"), ("conversations.history", None)]


def test_given_a_lost_answer_on_a_dm_when_posting_with_a_key_then_found_in_the_dm(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    email = sb.records("salesforce", "User")[-1]["Email"]
    notifier.dm_channel(email)  # resolve the DM before the faults, so only the post loses its answer
    sb.set_faults(api="slack", lost_response_rate=1.0)
    try:
        ts = notifier.post(user_email=email, text="your book: 3 at risk", idempotency_key="digest-dm-1")
    finally:
        sb.clear_faults()
    landed = _landed(sb, "your book: 3 at risk")
    assert [m["ts"] for m in landed] == [ts] and landed[0]["channel"].startswith("D")


def test_given_drops_and_lost_answers_when_posting_many_keyed_then_each_lands_exactly_once():
    """Dropped requests were never applied (so the lookup finds nothing and the post is repeated); lost ones were."""
    with Sandbox(portfolio=accounts_only(3, 2), seed=5, slack_message_interval_s=0.0) as sandbox:
        notifier = slack_from_ready(sandbox.ready, retry=FAST)
        sandbox.set_faults("slack.drop_rate=0.3,slack.lost_response_rate=0.4,slack.error_rate=0.1")
        try:
            sent = {f"digest {i}": notifier.post(channel="revops", text=f"digest {i}", idempotency_key=f"key-{i}") for i in range(12)}
        finally:
            sandbox.clear_faults()
        faults = [r["fault"] for r in sandbox.requests(api="slack")["requests"]]
        assert "lost_response" in faults and "drop" in faults  # the faults really happened
        for text, ts in sent.items():
            assert [m["ts"] for m in _landed(sandbox, text)] == [ts], text
        assert len(sandbox.slack_messages()) == 12


def test_given_no_key_when_the_answer_is_lost_then_the_post_is_retried_blindly_as_before(sb):
    """Unchanged behaviour without a key: no metadata, no history read, the retry posts again."""
    notifier = slack_from_ready(sb.ready, retry=dataclasses.replace(FAST, max_attempts=2))
    seq = sb.requests()["last_seq"]
    sb.set_faults(api="slack", lost_response_rate=1.0)
    try:
        with pytest.raises(RetryableError) as err:
            notifier.post(channel="general", text="unkeyed")
    finally:
        sb.clear_faults()
    assert not isinstance(err.value, SlackDeliveryUncertainError)
    assert _endpoints(sb, seq) == [("chat.postMessage", "lost_response")] * 2
    landed = _landed(sb, "unkeyed")
    assert len(landed) == 2 and all(m["metadata"] is None for m in landed)


def test_given_nothing_can_be_confirmed_then_not_posted_again_and_the_error_says_so(sb):
    """Every request dropped: the post may have landed, history cannot tell, so it is not repeated."""
    notifier = slack_from_ready(sb.ready, retry=dataclasses.replace(FAST, max_attempts=2))
    seq = sb.requests()["last_seq"]
    sb.set_faults(api="slack", drop_rate=1.0)
    try:
        with pytest.raises(SlackDeliveryUncertainError, match="may have been posted"):
            notifier.post(channel="healthsync", text="unconfirmable", idempotency_key="k-unconfirmable")
    finally:
        sb.clear_faults()
    assert [e for e, _ in _endpoints(sb, seq)] == ["chat.postMessage", "conversations.history", "conversations.history"]
    assert _landed(sb, "unconfirmable") == []


def test_given_an_unknown_channel_then_the_lookup_says_channel_not_found(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    with pytest.raises(Exception, match="channel_not_found") as err:
        notifier.find_posted("no-such-channel", "k", time.time() - 60)
    assert not isinstance(err.value, RetryableError)  # a definite answer, not retried
    # and the same channel in a keyed post is a plain, definite Slack error (nothing was sent)
    with pytest.raises(Exception, match="channel_not_found") as err:
        notifier.post(channel="no-such-channel", text="x", idempotency_key="k-unknown")
    assert not isinstance(err.value, RetryableError)


def test_history_through_the_official_client(sb):
    """The emulator's conversations.history: newest first, oldest/latest bounds, metadata only on request."""
    client = WebClient(token=sb.ready["slack"]["token"], base_url=sb.ready["slack"]["base_url"].rstrip("/") + "/")
    client.retry_handlers = []
    first = client.chat_postMessage(channel="healthsync-alerts", text="h1",
                                    metadata={"event_type": METADATA_EVENT_TYPE, "event_payload": {"key": "h1"}})
    second = client.chat_postMessage(channel="healthsync-alerts", text="h2")
    history = client.conversations_history(channel=first["channel"], oldest="0", include_all_metadata=True, limit=100)
    assert [m["text"] for m in history["messages"]] == ["h2", "h1"] and history["has_more"] is False
    assert history["messages"][1]["metadata"]["event_payload"] == {"key": "h1"}
    plain = client.conversations_history(channel="healthsync-alerts", oldest="0")  # by name, as the emulator resolves it
    assert [m["text"] for m in plain["messages"]] == ["h2", "h1"] and "metadata" not in plain["messages"][1]
    only_first = client.conversations_history(channel="healthsync-alerts", latest=second["ts"], limit=1)
    assert [m["ts"] for m in only_first["messages"]] == [first["ts"]]
    after_second = client.conversations_history(channel="healthsync-alerts", oldest=second["ts"])
    assert after_second["messages"] == []
    paged = client.conversations_history(channel="healthsync-alerts", oldest="0", limit=1)
    assert [m["text"] for m in paged["messages"]] == ["h2"] and paged["has_more"] is True
    rest = client.conversations_history(channel="healthsync-alerts", oldest="0", limit=1,
                                        cursor=paged["response_metadata"]["next_cursor"])
    assert [m["text"] for m in rest["messages"]] == ["h1"] and rest["has_more"] is False
    with pytest.raises(SlackApiError) as err:
        client.conversations_history(channel="C0NOPE")
    assert err.value.response["error"] == "channel_not_found"
