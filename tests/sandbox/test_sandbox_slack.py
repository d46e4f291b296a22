"""The Slack emulator driven by slack_sdk.WebClient(base_url=...) on 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from healthsync.connectors.sandbox import Sandbox
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


def _error(call) -> tuple[int, str, dict]:
    with pytest.raises(SlackApiError) as err:
        call()
    return err.value.response.status_code, err.value.response["error"], err.value.response


def test_history_takes_conversation_ids_only_as_real_slack_does(sandbox):
    sl = slack_client(sandbox)
    posted = sl.chat_postMessage(channel="#revops", text="by name is fine for posting")
    assert _error(lambda: sl.conversations_history(channel="revops"))[1] == "channel_not_found"
    sandbox.advance_clock(61)
    assert _error(lambda: sl.conversations_history(channel="#revops"))[1] == "channel_not_found"
    sandbox.advance_clock(61)
    assert [m["ts"] for m in sl.conversations_history(channel=posted["channel"])["messages"]] == [posted["ts"]]


def test_non_marketplace_app_reads_history_once_a_minute_and_15_messages_a_page(sandbox):
    """The default app type: docs.slack.dev (May 29, 2025) 1 request a minute, limit max and default 15."""
    sl = slack_client(sandbox)
    sandbox.slack.per_channel_interval_s = 0  # 20 posts without the 1 a second pacing
    cid = sl.conversations_open(users=sl.users_lookupByEmail(email="csm.one@example.com")["user"]["id"])["channel"]["id"]
    for i in range(20):
        sl.chat_postMessage(channel=cid, text=f"m{i}")
    page = sl.conversations_history(channel=cid, limit=100)
    assert len(page["messages"]) == 15 and page["has_more"] is True
    status, error, response = _error(lambda: sl.conversations_history(channel=cid, cursor=page["response_metadata"]["next_cursor"]))
    assert (status, error) == (429, "ratelimited") and response.headers["Retry-After"] == "60"
    sandbox.advance_clock(45)
    assert _error(lambda: sl.conversations_history(channel=cid))[2].headers["Retry-After"] in ("15", "16")  # 15 s left, rounded up
    sandbox.advance_clock(17)  # the emulator clock is the app's minute: no test sleeps it
    rest = sl.conversations_history(channel=cid, cursor=page["response_metadata"]["next_cursor"])
    assert [m["text"] for m in rest["messages"]] == ["m4", "m3", "m2", "m1", "m0"] and rest["has_more"] is False


def test_internal_app_has_tier_3_history():
    from sandbox_helpers import tiny_portfolio

    with Sandbox(portfolio=tiny_portfolio(3), slack_app_type="internal") as sb:
        sl = slack_client(sb)
        cid = sl.chat_postMessage(channel="#general", text="x")["channel"]
        for _ in range(50):
            assert sl.conversations_history(channel=cid, limit=500)["ok"]
        assert _error(lambda: sl.conversations_history(channel=cid))[:2] == (429, "ratelimited")


def test_conversations_list_pages_types_archived_and_argument_errors(sandbox):
    sl = slack_client(sandbox)
    sandbox.slack.add_channel("cs-private", private=True)
    sandbox.slack.add_channel("cs-retired")
    sandbox.slack.archive_channel("cs-retired")
    names, cursor, pages = [], None, 0
    while True:
        page = sl.conversations_list(types="public_channel,private_channel", limit=200, cursor=cursor)
        pages += 1
        names += [c["name"] for c in page["channels"]]
        cursor = page["response_metadata"]["next_cursor"]
        if not cursor:
            break
    assert pages == 1 and set(names) == {"cs-escalations", "cs-leadership", "revops", "general", "healthsync",
                                         "healthsync-alerts", "cs-private", "cs-retired"}
    public = sl.conversations_list(exclude_archived=True, limit=3)
    assert len(public["channels"]) == 3 and public["response_metadata"]["next_cursor"]
    rest = sl.conversations_list(exclude_archived=True, limit=3, cursor=public["response_metadata"]["next_cursor"])
    listed = {c["name"]: c for c in public["channels"] + rest["channels"]}
    assert "cs-private" not in listed and "cs-retired" not in listed  # default types: public_channel only
    assert all(c["id"].startswith("C") and c["is_channel"] and c["is_member"] for c in listed.values())
    assert _error(lambda: sl.conversations_list(limit=1000))[1] == "invalid_limit"
    assert _error(lambda: sl.conversations_list(cursor="bm90LWEtY3Vyc29y"))[1] == "invalid_cursor"
    assert _error(lambda: sl.conversations_list(types="public_channel,shared"))[1] == "invalid_types"
    with pytest.raises(SlackApiError) as archived:
        sl.chat_postMessage(channel="#cs-retired", text="x")
    assert archived.value.response["error"] == "is_archived"


def test_missing_scopes_answer_missing_scope_with_needed_and_provided():
    from sandbox_helpers import tiny_portfolio

    scopes = {"chat:write", "users:read.email", "im:write", "channels:read"}
    with Sandbox(portfolio=tiny_portfolio(3), slack_scopes=scopes) as sb:
        sl = slack_client(sb)
        cid = sl.chat_postMessage(channel="#general", text="posting needs chat:write only")["channel"]
        _, error, response = _error(lambda: sl.conversations_history(channel=cid))
        assert (error, response["needed"]) == ("missing_scope", "channels:history")
        assert response["provided"] == "channels:read,chat:write,im:write,users:read.email"
        assert _error(lambda: sl.conversations_list(types="private_channel"))[2]["needed"] == "groups:read"
        assert sl.conversations_list()["ok"]
        sb.slack.scopes.discard("chat:write")
        assert _error(lambda: sl.chat_postMessage(channel=cid, text="x"))[2]["needed"] == "chat:write"
