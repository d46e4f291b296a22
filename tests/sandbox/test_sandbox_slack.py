"""The Slack emulator driven by slack_sdk.WebClient(base_url=...) on 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from sandbox_helpers import slack_client


def test_auth_lookup_open_dm_and_post(sandbox):
    sl = slack_client(sandbox)
    assert sl.auth_test()["team_id"]
    user = sl.users_lookupByEmail(email="mgr.two@example.com")["user"]
    assert user["profile"]["email"] == "mgr.two@example.com" and user["real_name"] == "Morgan Two"
    dm = sl.conversations_open(users=user["id"])["channel"]["id"]
    assert dm.startswith("D")
    again = sl.conversations_open(users=user["id"])
    assert again["channel"]["id"] == dm and again["already_open"] is True
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Acme 4* is red"}}]
    posted = sl.chat_postMessage(channel=dm, text="Acme 4 is red", blocks=blocks)
    assert posted["channel"] == dm and posted["message"]["text"] == "Acme 4 is red"
    msgs = sandbox.slack_messages()
    assert [(m["channel"], m["text"], m["blocks"]) for m in msgs] == [(dm, "Acme 4 is red", blocks)]
    with pytest.raises(SlackApiError) as missing:
        sl.users_lookupByEmail(email="nobody@example.com")
    assert missing.value.response["error"] == "users_not_found" and missing.value.response.status_code == 200


def test_form_body_with_blocks_as_json_string_and_channel_names(sandbox):
    sl = slack_client(sandbox)
    blocks = [{"type": "section", "text": {"type": "plain_text", "text": "form post"}}]
    res = sl.api_call("chat.postMessage", data={"channel": "#cs-escalations", "text": "fallback",
                                                "blocks": json.dumps(blocks)})
    assert res["ok"] and res["channel"].startswith("C")
    assert sandbox.slack_messages()[-1]["blocks"] == blocks
    assert sandbox.slack_messages()[-1]["channel_name"] == "#cs-escalations"
    with pytest.raises(SlackApiError) as nowhere:
        sl.chat_postMessage(channel="#no-such-channel", text="x")
    assert nowhere.value.response["error"] == "channel_not_found"


def test_block_limits_answer_invalid_blocks(sandbox):
    sl = slack_client(sandbox)
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "x"}}
    with pytest.raises(SlackApiError) as too_many:
        sl.chat_postMessage(channel="#revops", text="t", blocks=[section] * 51)
    assert too_many.value.response["error"] == "invalid_blocks"
    long = {"type": "section", "text": {"type": "mrkdwn", "text": "y" * 3001}}
    with pytest.raises(SlackApiError) as too_long:
        sl.chat_postMessage(channel="#revops", text="t", blocks=[long])
    assert too_long.value.response["error"] == "invalid_blocks"
    ok = sl.chat_postMessage(channel="#revops", text="t", blocks=[section] * 50)
    assert ok["ok"] and len(sandbox.slack_messages()) == 1


def test_one_message_per_second_per_channel_then_retry_handler_succeeds(sandbox):
    sl = slack_client(sandbox)
    sl.chat_postMessage(channel="#general", text="first")
    with pytest.raises(SlackApiError) as limited:
        sl.chat_postMessage(channel="#general", text="too soon")
    resp = limited.value.response
    assert resp.status_code == 429 and resp["error"] == "ratelimited"
    assert resp.headers["Retry-After"] == "1" or resp.headers["retry-after"] == "1"
    sl.chat_postMessage(channel="#revops", text="another channel is not limited")
    patient = slack_client(sandbox)
    patient.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=2))
    started = time.monotonic()
    assert patient.chat_postMessage(channel="#revops", text="second")["ok"]
    assert time.monotonic() - started >= 0.9  # it waited for Retry-After
    assert [m["text"] for m in sandbox.slack_messages()] == ["first", "another channel is not limited", "second"]


def test_bad_token_is_invalid_auth(sandbox):
    from slack_sdk import WebClient
    bad = WebClient(token="xoxb-wrong", base_url=sandbox.ready["slack"]["base_url"])
    with pytest.raises(SlackApiError) as denied:
        bad.auth_test()
    assert denied.value.response["error"] == "invalid_auth"
