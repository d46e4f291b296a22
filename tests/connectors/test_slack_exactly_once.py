"""A keyed Slack post lands exactly once even when Slack applies it and the answer is lost.

Everything runs the official slack_sdk client against the Slack emulator, whose
`lost_response_rate` applies chat.postMessage and then closes the connection. The emulator
is as strict as real Slack: conversations.history takes channel IDs only, and a
non-Marketplace app (its default) may read history once a minute, 15 messages a page.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from healthsync.connectors.base import RetryableError
from healthsync.connectors.sandbox import Sandbox
from healthsync.connectors.slack import (
    METADATA_EVENT_TYPE,
    SlackChannelNotFoundError,
    SlackDeliveryUncertainError,
    SlackHistoryUnreadableError,
    slack_from_ready,
)
from tests.connectors.conftest import FAST, accounts_only


@pytest.fixture(scope="module")
def sb():
    # no per-channel pacing: a blind retry must be able to land a second copy, so the tests can see one
    with Sandbox(portfolio=accounts_only(3, 2), seed=11, slack_message_interval_s=0.0) as sandbox:
        yield sandbox


@pytest.fixture(autouse=True)
def a_minute_passes(request):
    """Each test starts with the history budget of a fresh minute (the emulator's windows run on its clock)."""
    if "sb" in request.fixturenames:
        request.getfixturevalue("sb").advance_clock(61)


def _landed(sb, text: str) -> list[dict]:
    return [m for m in sb.slack_messages() if m["text"] == text]


def _endpoints(sb, since: int) -> list[tuple[str, str | None]]:
    return [(r["endpoint"], r["fault"]) for r in sb.requests(since=since, api="slack")["requests"]]


def _client(sb) -> WebClient:
    client = WebClient(token=sb.ready["slack"]["token"], base_url=sb.ready["slack"]["base_url"].rstrip("/") + "/")
    client.retry_handlers = []
    return client


def test_given_a_channel_name_and_a_lost_answer_when_posting_keyed_then_exactly_one_message(sb):
    """Issue 12.1: history by name answers channel_not_found, which once read as "nothing posted" and posted again."""
    notifier = slack_from_ready(sb.ready, retry=FAST)
    seq = sb.requests()["last_seq"]
    sb.set_faults(api="slack", lost_response_rate=1.0)
    try:
        ts = notifier.post(channel="#cs-escalations", text="Acme missed its SLA", idempotency_key="ep-1|manager|escalation")
    finally:
        sb.clear_faults()
    landed = _landed(sb, "Acme missed its SLA")
    assert [m["ts"] for m in landed] == [ts]
    assert landed[0]["metadata"] == {"event_type": METADATA_EVENT_TYPE, "event_payload": {"key": "ep-1|manager|escalation"}}
    # the name was resolved to its ID first; the post was applied, its answer lost; the retry read history by ID
    assert _endpoints(sb, seq) == [("conversations.list", None), ("chat.postMessage", "lost_response"),
                                   ("conversations.history", None)]
    history = sb.requests(since=seq, api="slack")["requests"][-1]
    assert history["status"] == 200


def test_given_a_resolved_name_when_posting_again_then_conversations_list_is_not_asked_again(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    notifier.post(channel="revops", text="first keyed", idempotency_key="k-first")
    seq = sb.requests()["last_seq"]
    notifier.post(channel="#revops", text="second keyed", idempotency_key="k-second")
    assert [e for e, _ in _endpoints(sb, seq)] == ["chat.postMessage"]
    assert notifier.channel_id("REVOPS") == _landed(sb, "second keyed")[0]["channel"]


def test_given_a_lost_answer_on_a_dm_when_posting_with_a_key_then_found_in_the_dm(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    email = sb.records("salesforce", "User")[-1]["Email"]
    notifier.dm_channel(email)  # resolve the DM before the faults, so only the post loses its answer
    sb.set_faults(api="slack", lost_response_rate=1.0)
    try:
        ts = notifier.post(user_email=email, text="your book: 3 at risk", idempotency_key="digest-dm-1", items=["a1", "b2"])
    finally:
        sb.clear_faults()
    landed = _landed(sb, "your book: 3 at risk")
    assert [m["ts"] for m in landed] == [ts] and landed[0]["channel"].startswith("D")
    assert landed[0]["metadata"]["event_payload"] == {"key": "digest-dm-1", "items": "a1 b2"}
    sb.advance_clock(61)
    scan = notifier.scan_history(landed[0]["channel"], time.time() - 60)
    assert scan.complete and scan.keys == {"digest-dm-1": ts} and scan.items == {"a1": ts, "b2": ts}


def test_given_drops_and_lost_answers_when_posting_many_keyed_then_each_lands_exactly_once():
    """Dropped requests were never applied (so the lookup finds nothing and the post is repeated); lost ones were.

    Many lookups in a row: an internal app (Tier 3); the non-Marketplace budget has its own tests below.
    """
    with Sandbox(portfolio=accounts_only(3, 2), seed=5, slack_message_interval_s=0.0, slack_app_type="internal") as sandbox:
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


def test_given_the_history_budget_spent_when_an_answer_is_lost_then_not_posted_again_and_uncertain(sb):
    """Non-Marketplace: 1 history call a minute. The lookup is refused with Retry-After 60, more than this
    policy waits: the post is not repeated blindly, it is reported uncertain (the next run resolves it)."""
    notifier = slack_from_ready(sb.ready, retry=FAST)
    channel = notifier.channel_id("healthsync")
    notifier.scan_history(channel, time.time() - 60)  # this minute's one read
    seq = sb.requests()["last_seq"]
    sb.set_faults(api="slack", lost_response_rate=1.0)
    try:
        with pytest.raises(SlackDeliveryUncertainError, match="may have been posted"):
            notifier.post(channel=channel, text="budget spent", idempotency_key="k-budget")
    finally:
        sb.clear_faults()
    log = sb.requests(since=seq, api="slack")["requests"]
    assert [(r["endpoint"], r["status"]) for r in log][:2] == [("chat.postMessage", 0), ("conversations.history", 429)]
    assert [r["endpoint"] for r in log].count("chat.postMessage") == 1
    assert len(_landed(sb, "budget spent")) == 1


def test_given_a_retry_after_within_the_policy_then_the_lookup_waits_and_finds_the_message(sb):
    """The same, with a policy that waits out the remaining seconds of the minute (the production default waits 60 s)."""
    notifier = slack_from_ready(sb.ready, retry=dataclasses.replace(FAST, max_retry_after=5))
    channel = notifier.channel_id("general")
    notifier.scan_history(channel, time.time() - 60)
    sb.advance_clock(57)  # 3 s of this minute's window left
    sb.set_faults(api="slack", lost_response_rate=1.0)
    try:
        ts = notifier.post(channel=channel, text="waited", idempotency_key="k-waited")
    finally:
        sb.clear_faults()
    assert [m["ts"] for m in _landed(sb, "waited")] == [ts]
    assert notifier.stats.retries >= 2  # the lost answer, then the 429 on history


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
    channel = notifier.channel_id("healthsync")
    seq = sb.requests()["last_seq"]
    sb.set_faults(api="slack", drop_rate=1.0)
    try:
        with pytest.raises(SlackDeliveryUncertainError, match="may have been posted"):
            notifier.post(channel=channel, text="unconfirmable", idempotency_key="k-unconfirmable")
    finally:
        sb.clear_faults()
    assert [e for e, _ in _endpoints(sb, seq)] == ["chat.postMessage", "conversations.history", "conversations.history"]
    assert _landed(sb, "unconfirmable") == []


def test_given_no_history_scope_when_an_answer_is_lost_then_uncertain_naming_the_scope(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    channel = notifier.channel_id("cs-leadership")
    scopes = set(sb.slack.scopes)
    sb.slack.scopes.discard("channels:history")
    sb.set_faults(api="slack", lost_response_rate=1.0)
    try:
        with pytest.raises(SlackDeliveryUncertainError, match="channels:history"):
            notifier.post(channel=channel, text="no scope", idempotency_key="k-no-scope")
    finally:
        sb.clear_faults()
        sb.slack.scopes = scopes
    assert len(_landed(sb, "no scope")) == 1


def test_given_an_unknown_channel_then_resolution_and_lookup_say_channel_not_found(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    with pytest.raises(SlackHistoryUnreadableError, match="channel_not_found") as err:
        notifier.find_posted("no-such-channel", "k", time.time() - 60)
    assert not isinstance(err.value, RetryableError)  # a definite answer, not retried
    # and the same channel in a keyed post is a definite error before anything is sent
    seq = sb.requests()["last_seq"]
    with pytest.raises(SlackChannelNotFoundError, match="channel_not_found") as err:
        notifier.post(channel="no-such-channel", text="x", idempotency_key="k-unknown")
    assert not isinstance(err.value, RetryableError)
    assert "chat.postMessage" not in [e for e, _ in _endpoints(sb, seq)]


def test_given_an_archived_channel_when_posting_keyed_then_is_archived_and_the_cached_name_is_dropped(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    sb.slack.add_channel("cs-old-escalations")
    notifier.post(channel="cs-old-escalations", text="before", idempotency_key="k-before")
    sb.slack.archive_channel("cs-old-escalations")
    with pytest.raises(Exception, match="is_archived"):
        notifier.post(channel="cs-old-escalations", text="after", idempotency_key="k-after")
    sb.advance_clock(61)
    with pytest.raises(SlackChannelNotFoundError):  # resolved again: archived channels are not listed
        notifier.post(channel="cs-old-escalations", text="after", idempotency_key="k-after")


def test_given_more_channels_than_one_page_then_resolution_follows_the_cursor(sb):
    notifier = slack_from_ready(sb.ready, retry=FAST)
    for i in range(25):
        sb.slack.add_channel(f"cs-region-{i:02d}")
    seq = sb.requests()["last_seq"]
    cid = notifier.channel_id("#cs-region-24")
    assert cid == next(k for k, v in sb.slack.channels.items() if v == "cs-region-24")
    assert [e for e, _ in _endpoints(sb, seq)].count("conversations.list") >= 3  # at most 10 a page


def test_history_through_the_official_client(sb):
    """The emulator's conversations.history: IDs only, newest first, oldest/latest bounds, metadata on request."""
    client = _client(sb)
    first = client.chat_postMessage(channel="healthsync-alerts", text="h1",
                                    metadata={"event_type": METADATA_EVENT_TYPE, "event_payload": {"key": "h1"}})
    second = client.chat_postMessage(channel="healthsync-alerts", text="h2")
    cid = first["channel"]

    def history(**kw):
        sb.advance_clock(61)  # one call a minute (non-Marketplace app)
        return client.conversations_history(**kw)

    got = history(channel=cid, oldest="0", include_all_metadata=True, limit=100)
    assert [m["text"] for m in got["messages"]] == ["h2", "h1"] and got["has_more"] is False
    assert got["messages"][1]["metadata"]["event_payload"] == {"key": "h1"}
    with pytest.raises(SlackApiError) as by_name:
        history(channel="healthsync-alerts", oldest="0")
    assert by_name.value.response["error"] == "channel_not_found"  # a name is not a conversation ID
    plain = history(channel=cid, oldest="0")
    assert [m["text"] for m in plain["messages"]] == ["h2", "h1"] and "metadata" not in plain["messages"][1]
    only_first = history(channel=cid, latest=second["ts"], limit=1)
    assert [m["ts"] for m in only_first["messages"]] == [first["ts"]]
    assert history(channel=cid, oldest=second["ts"])["messages"] == []
    paged = history(channel=cid, oldest="0", limit=1)
    assert [m["text"] for m in paged["messages"]] == ["h2"] and paged["has_more"] is True
    rest = history(channel=cid, oldest="0", limit=1, cursor=paged["response_metadata"]["next_cursor"])
    assert [m["text"] for m in rest["messages"]] == ["h1"] and rest["has_more"] is False
    with pytest.raises(SlackApiError) as err:
        history(channel="C0NOPE00")
    assert err.value.response["error"] == "channel_not_found"


def test_given_a_dm_resolved_in_an_earlier_run_then_the_next_run_posts_without_looking_the_user_up(sb, tmp_path):
    """Issue 14: a daily digest per owner is one chat.postMessage, not lookupByEmail + conversations.open + post."""
    from datetime import datetime, timezone

    from healthsync.sync.slack_delivery import StateChannelCache
    from healthsync.sync.state import open_store

    store = open_store(f"sqlite:///{tmp_path}/state.db")
    try:
        email = sb.records("salesforce", "User")[-1]["Email"]
        first = slack_from_ready(sb.ready, retry=FAST)
        first.use_channel_cache(StateChannelCache(store, datetime.now(timezone.utc)))
        first.post(user_email=email, text="digest day 1", idempotency_key="dm-cache-1")
        seq = sb.requests()["last_seq"]

        later = slack_from_ready(sb.ready, retry=FAST)  # the next run: a new notifier, the same state
        later.use_channel_cache(StateChannelCache(store, datetime.now(timezone.utc)))
        later.post(user_email=email, text="digest day 2", idempotency_key="dm-cache-2")
        assert [e for e, _ in _endpoints(sb, seq)] == ["chat.postMessage"]
        assert _landed(sb, "digest day 2")[0]["channel"] == _landed(sb, "digest day 1")[0]["channel"]

        # a cached id Slack no longer knows: the user is resolved again and the message lands once
        cache = StateChannelCache(store, datetime.now(timezone.utc))
        cache.put_many({"@" + email.lower(): "D0GONE0000"})
        stale = slack_from_ready(sb.ready, retry=FAST)
        stale.use_channel_cache(cache)
        stale.post(user_email=email, text="digest day 3", idempotency_key="dm-cache-3")
        landed = _landed(sb, "digest day 3")
        assert len(landed) == 1 and landed[0]["channel"] == _landed(sb, "digest day 1")[0]["channel"]
        assert cache.get("@" + email.lower()) == landed[0]["channel"]
    finally:
        store.close()
