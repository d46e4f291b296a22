"""Slack delivery after any doubt: a named channel with a lost answer, maybe-sent markers, a lost state database.

The escalation stage runs against the sandbox (slack_sdk over loopback HTTP); the Slack emulator
is a non-Marketplace app (1 conversations.history call a minute, IDs only). Each test starts a
minute later on the emulator clock, so it has that minute's history call; outcomes are read
from the messages the emulator received.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "playbooks"))
from sandbox_world import RED, open_store, scores_frame, start_world, accounts  # noqa: E402,F401 (accounts: a fixture)

from healthsync.connectors.slack import METADATA_EVENT_TYPE, slack_from_ready  # noqa: E402
from healthsync.sync.escalation import pending_markers, run_escalation  # noqa: E402
from healthsync.sync.playbooks_job import run_playbooks  # noqa: E402
from healthsync.sync.slack_delivery import item_key  # noqa: E402
from tests.connectors.conftest import FAST  # noqa: E402

#: for runs where every Slack request is dropped: give up after a few tries (FAST allows 12 of each, nested)
BRIEF = dataclasses.replace(FAST, max_attempts=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = start_world(tmp_path_factory.mktemp("world"))
    yield w
    w.close()


@pytest.fixture
def store(world, tmp_path):
    world.sb.advance_clock(61)  # a new minute: this test's history budget
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def _escalate(world, store, scores, slack=None):
    slack = slack or slack_from_ready(world.sb.ready, retry=FAST)
    return run_escalation(store, world.settings, slack, world.connectors, world.now(), "esc", scores=scores, owners=world.owners)


def _open_episode(world, store, accounts, i: int, **override):
    acc = accounts[accounts["crm"] == "salesforce"].iloc[i].to_dict()
    scores = scores_frame(accounts, {acc["account_id"]: {**RED, **override}})
    run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1")
    return acc, scores


def _items_in_slack(world, since: int = 0) -> list[str]:
    """Every item key carried by the messages the emulator received (one entry per message that carries it)."""
    out = []
    for m in world.sb.slack_messages()[since:]:
        meta = m.get("metadata") or {}
        if meta.get("event_type") == METADATA_EVENT_TYPE:
            out += str(meta["event_payload"].get("items", "")).split()
    return out


def test_given_a_named_fallback_channel_and_a_lost_answer_when_escalating_then_exactly_one_message(world, store, accounts):
    """Issue 12.1: the owner has no Slack user, so the alert goes to the default config's `#cs-escalations`."""
    acc, scores = _open_episode(world, store, accounts, 0, owner_email="nobody-in-slack@example.com")
    mark = len(world.sb.slack_messages())
    world.sb.set_faults(api="slack", lost_response_rate=1.0)  # chat.postMessage is applied, its answer lost
    try:
        result = _escalate(world, store, scores)
    finally:
        world.sb.clear_faults()
    landed = world.sb.slack_messages()[mark:]
    assert [m["channel_name"] for m in landed] == ["#cs-escalations"]
    assert (result.alerts_sent, result.errors) == (1, [])
    assert pending_markers(store) == []
    endpoints = [r["endpoint"] for r in world.sb.requests(api="slack")["requests"][-4:]]
    assert endpoints[-2:] == ["chat.postMessage", "conversations.history"]


def test_given_a_maybe_sent_marker_whose_message_landed_then_the_next_run_marks_it_sent_and_posts_nothing(world, store, accounts):
    acc, scores = _open_episode(world, store, accounts, 1)
    slack = slack_from_ready(world.sb.ready, retry=FAST)
    slack.dm_channel(acc["owner_email"])  # opened before the faults: only the post loses its answer
    mark = len(world.sb.slack_messages())
    world.sb.slack.scopes.discard("im:history")  # ... and cannot be confirmed: left maybe-sent
    world.sb.set_faults(api="slack", lost_response_rate=1.0)
    try:
        first = _escalate(world, store, scores, slack)
    finally:
        world.sb.clear_faults()
        world.sb.slack.scopes.add("im:history")
    assert first.alerts_sent == 0 and any("may not have been delivered" in e for e in first.errors)
    assert len(pending_markers(store)) == 1 and len(world.sb.slack_messages()) == mark + 1

    world.sb.advance_clock(61)
    again = _escalate(world, store, scores)
    assert (again.alerts_sent, again.maybe_sent_confirmed, again.errors) == (0, 1, [])
    assert pending_markers(store) == [] and len(world.sb.slack_messages()) == mark + 1
    assert _escalate(world, store, scores).alerts_sent == 0


def test_given_a_maybe_sent_marker_whose_message_never_landed_then_the_next_run_delivers_it_once(world, store, accounts):
    acc, scores = _open_episode(world, store, accounts, 2)
    slack = slack_from_ready(world.sb.ready, retry=BRIEF)
    slack.dm_channel(acc["owner_email"])
    mark = len(world.sb.slack_messages())
    world.sb.set_faults(api="slack", drop_rate=1.0)  # the post never reaches Slack, and nothing can be checked
    try:
        first = _escalate(world, store, scores, slack)
    finally:
        world.sb.clear_faults()
    assert first.alerts_sent == 0 and len(pending_markers(store)) == 1
    assert len(world.sb.slack_messages()) == mark

    world.sb.advance_clock(61)
    again = _escalate(world, store, scores)
    assert (again.alerts_sent, again.maybe_sent_resent, again.errors) == (1, 1, [])
    landed = world.sb.slack_messages()[mark:]
    assert len(landed) == 1 and landed[0]["channel"] == slack.dm_channel(acc["owner_email"])
    assert pending_markers(store) == []
    world.sb.advance_clock(61)
    assert _escalate(world, store, scores).alerts_sent == 0 and len(world.sb.slack_messages()) == mark + 1


def test_given_no_history_scope_when_a_marker_is_pending_then_the_run_says_so_and_resends_nothing(world, store, accounts):
    acc, scores = _open_episode(world, store, accounts, 3)
    slack = slack_from_ready(world.sb.ready, retry=BRIEF)
    slack.dm_channel(acc["owner_email"])
    mark = len(world.sb.slack_messages())
    world.sb.set_faults(api="slack", drop_rate=1.0)
    try:
        _escalate(world, store, scores, slack)
    finally:
        world.sb.clear_faults()
    world.sb.advance_clock(61)
    world.sb.slack.scopes.discard("im:history")
    try:
        blind = _escalate(world, store, scores)
    finally:
        world.sb.slack.scopes.add("im:history")
    assert blind.alerts_sent == 0 and len(world.sb.slack_messages()) == mark
    assert any("missing_scope" in e and "im:history" in e and "may not have been delivered" in e for e in blind.errors), blind.errors
    assert len(pending_markers(store)) == 1  # kept, not dropped

    world.sb.advance_clock(61)
    seeing = _escalate(world, store, scores)
    assert (seeing.alerts_sent, seeing.errors) == (1, []) and len(world.sb.slack_messages()) == mark + 1


def test_given_a_lost_state_database_when_the_same_day_run_repeats_then_nothing_is_posted_twice(world, store, accounts, tmp_path):
    acc, scores = _open_episode(world, store, accounts, 4)
    mark = len(world.sb.slack_messages())
    first = _escalate(world, store, scores)
    assert first.alerts_sent == 1 and first.history_reads == 0  # a task this state created: nothing to check
    [sent] = world.sb.slack_messages()[mark:]

    world.sb.advance_clock(61)
    lost = open_store(f"sqlite:///{tmp_path}/rebuilt.db")  # the state database is gone: a new one
    try:
        run_playbooks(lost, world.settings, scores, world.connectors, world.now(), "r2")  # finds the task in the CRM
        again = _escalate(world, lost, scores)
        assert (again.alerts_sent, again.found_delivered, again.errors) == (0, 1, [])
        assert again.history_reads == 1
        assert len(world.sb.slack_messages()) == mark + 1
        assert _items_in_slack(world, mark) == _items_in_slack(world, len(world.sb.slack_messages()) - 1)
        # the rebuilt state now knows: a rerun reads nothing and posts nothing
        world.sb.advance_clock(61)
        seq = world.sb.requests()["last_seq"]
        assert _escalate(world, lost, scores).alerts_sent == 0
        assert "conversations.history" not in [r["endpoint"] for r in world.sb.requests(since=seq, api="slack")["requests"]]
        ep_id = next(r for r in lost.engine.connect().execute(lost.tables["episodes"].select()).mappings())["episode_id"]
        assert sent["metadata"]["event_payload"]["items"].split() == [item_key(ep_id, "owner", "alert")]
    finally:
        lost.close()


def test_given_a_lost_state_and_no_history_scope_then_doubtful_messages_are_held_back_and_said_not_sent(world, store, accounts, tmp_path):
    acc, scores = _open_episode(world, store, accounts, 5)
    mark = len(world.sb.slack_messages())
    assert _escalate(world, store, scores).alerts_sent == 1
    world.sb.advance_clock(61)
    lost = open_store(f"sqlite:///{tmp_path}/rebuilt.db")
    try:
        run_playbooks(lost, world.settings, scores, world.connectors, world.now(), "r2")
        world.sb.slack.scopes.discard("im:history")
        try:
            held = _escalate(world, lost, scores)
        finally:
            world.sb.slack.scopes.add("im:history")
        assert held.alerts_sent == 0 and len(world.sb.slack_messages()) == mark + 1
        assert any("held back" in e and "missing_scope" in e for e in held.errors), held.errors
        world.sb.advance_clock(61)
        seeing = _escalate(world, lost, scores)
        assert (seeing.alerts_sent, seeing.found_delivered, seeing.errors) == (0, 1, [])
        assert len(world.sb.slack_messages()) == mark + 1
    finally:
        lost.close()


def test_given_no_channels_read_scope_then_a_named_channel_is_an_error_naming_it_and_dms_still_go(world, store, accounts):
    ghost, scores = _open_episode(world, store, accounts, 6, owner_email="nobody-in-slack@example.com")
    owned = accounts[accounts["crm"] == "salesforce"].iloc[7].to_dict()
    scores = scores_frame(accounts, {ghost["account_id"]: {**RED, "owner_email": "nobody-in-slack@example.com"},
                                     owned["account_id"]: RED})
    run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1")
    mark = len(world.sb.slack_messages())
    world.sb.slack.scopes.discard("channels:read")
    world.sb.slack.scopes.discard("groups:read")
    try:
        result = _escalate(world, store, scores)
    finally:
        world.sb.slack.scopes |= {"channels:read", "groups:read"}
    assert any("conversations.list" in e and "missing_scope" in e and "channels:read" in e for e in result.errors), result.errors
    assert result.alerts_sent == 1 and [m["channel"][0] for m in world.sb.slack_messages()[mark:]] == ["D"]
    world.sb.advance_clock(61)
    assert _escalate(world, store, scores).alerts_sent == 1  # the channel alert, once the scope is there
    assert [m["channel_name"] for m in world.sb.slack_messages()[mark + 1:]] == ["#cs-escalations"]
