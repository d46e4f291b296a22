"""SLA escalation against the sandbox: the CRM task is the clock, one Slack message per level, recovery notes."""

import json
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "playbooks"))
from sandbox_world import RED, scores_frame, start_world, accounts, store  # noqa: E402,F401 (accounts, store: fixtures)

from healthsync.sync.escalation import pending_markers, run_escalation  # noqa: E402
from healthsync.sync.status import status  # noqa: E402
from healthsync.sync.playbooks_job import run_playbooks  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = start_world(tmp_path_factory.mktemp("world"), escalation={"fallback_channels": {"smb": "#cs-smb"}})
    yield w
    w.close()


def pick(accounts, crm, i):
    return accounts[accounts["crm"] == crm].iloc[i].to_dict()


def dm(world, email: str) -> str | None:
    with world.sb.slack.lock:
        uid = next((u["id"] for u in world.sb.slack.users.values() if u["profile"]["email"].lower() == email.lower()), None)
        return world.sb.slack.dms.get(uid)


def new_messages(world, since: int) -> list[dict]:
    return world.sb.slack_messages()[since:]


def escalate(world, store, scores=None, **kw):
    return run_escalation(store, world.settings, world.slack, world.connectors, world.now(), "esc", scores=scores, owners=world.owners, **kw)


def manager_of(world, email):
    people = world.owners.dropna(subset=["manager_email"]).set_index("email")
    return people.loc[email.lower(), "manager_email"]


def episode_row(store) -> dict:
    t = store.tables["episodes"]
    with store.engine.connect() as conn:
        return dict(conn.execute(select(t)).mappings().one())


def test_red_episode_alert_then_manager_then_vp_once_each_and_recovery_when_the_task_is_completed(world, store, accounts):
    acc = pick(accounts, "salesforce", 0)
    scores = scores_frame(accounts, {acc["account_id"]: RED})
    assert run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1").tasks_created == 1
    owner = acc["owner_email"]
    manager = manager_of(world, owner)
    vp = manager_of(world, manager)

    mark = len(world.sb.slack_messages())
    opened = escalate(world, store, scores)
    assert (opened.alerts_sent, opened.escalations, opened.errors) == (1, 0, [])
    [alert] = new_messages(world, mark)
    assert alert["channel"] == dm(world, owner)
    body = json.dumps(alert["blocks"])
    assert acc["name"] in body and "30 (Red)" in body and "Open in Salesforce" in body
    assert f"/lightning/r/Account/{acc['account_id'][3:]}/view" in body

    # before the due time nothing more happens
    world.sb.advance_clock(23 * 3600)
    assert escalate(world, store, scores).to_json() == {"alerts_sent": 0, "alert_episodes": 0, "escalations": 0, "recoveries": 0, "episodes_closed": 0, "errors": []}

    # past due (seed 003: Red within 24 h), task still open -> the CS manager, exactly once
    world.sb.advance_clock(2 * 3600)
    mark = len(world.sb.slack_messages())
    late = escalate(world, store, scores)
    assert (late.escalations, late.alerts_sent) == (1, 0)
    [esc] = new_messages(world, mark)
    assert esc["channel"] == dm(world, manager)
    assert "past due" in esc["text"] and "still open" in json.dumps(esc["blocks"])
    assert escalate(world, store, scores).escalations == 0
    assert new_messages(world, mark) == [esc]

    # 48 h after the manager level fell due -> the VP of CS (seed 003: "VP CS if no response in 48h"), once
    world.sb.advance_clock(46 * 3600)  # due + 47 h
    assert escalate(world, store, scores).escalations == 0
    world.sb.advance_clock(2 * 3600)
    mark = len(world.sb.slack_messages())
    assert escalate(world, store, scores).escalations == 1
    [to_vp] = new_messages(world, mark)
    assert to_vp["channel"] == dm(world, vp)
    assert escalate(world, store, scores).escalations == 0

    # the owner completes the task in Salesforce: no more escalation, recovery notes to manager and VP
    task_id = episode_row(store)["task_id"]
    world.sb.modify("salesforce", "Task", task_id, {"Status": "Completed"})
    mark = len(world.sb.slack_messages())
    done = escalate(world, store, scores)
    assert (done.recoveries, done.escalations, done.episodes_closed) == (2, 0, 1)
    notes = new_messages(world, mark)
    assert {m["channel"] for m in notes} == {dm(world, manager), dm(world, vp)}
    assert all("Resolved" in m["text"] and "the task was completed" in json.dumps(m["blocks"]) for m in notes)
    ep = episode_row(store)
    assert (ep["status"], ep["close_reason"], ep["task_status"]) == ("closed", "task_completed", "completed")
    world.sb.advance_clock(72 * 3600)
    assert escalate(world, store, scores).to_json()["recoveries"] == 0
    assert new_messages(world, mark) == notes

    # the condition still holds: no new episode until it has cleared once
    assert run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r2").episodes_opened == 0
    run_playbooks(store, world.settings, scores_frame(accounts), world.connectors, world.now(), "r3")
    assert run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r4").episodes_opened == 1


def test_hubspot_rapid_decline_stops_at_the_manager_and_completion_sends_recovery(world, store, accounts):
    acc = pick(accounts, "hubspot", 0)
    scores = scores_frame(accounts, {acc["account_id"]: {"score": 55.0, "delta_30d": -18.0, "momentum": "down"}})
    assert run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1").tasks_created == 1
    assert escalate(world, store, scores).alerts_sent == 1
    world.sb.advance_clock(49 * 3600)  # SLA 48 h
    assert escalate(world, store, scores).escalations == 1
    world.sb.advance_clock(100 * 3600)
    assert escalate(world, store, scores).escalations == 0  # escalate_to: manager, never the VP
    task_id = episode_row(store)["task_id"]
    world.sb.modify("hubspot", "tasks", task_id, {"hs_task_status": "COMPLETED"})
    world.sb.advance_clock(world.sb.hubspot.search_lag_seconds)  # HubSpot search sees the completion once indexed
    mark = len(world.sb.slack_messages())
    done = escalate(world, store, scores)
    assert (done.recoveries, done.episodes_closed) == (1, 1)
    [note] = new_messages(world, mark)
    assert note["channel"] == dm(world, manager_of(world, acc["owner_email"]))


def test_crm_text_is_escaped_and_pings_nobody(world, store, accounts):
    acc = pick(accounts, "salesforce", 1)
    evil = "<!channel> Acme & <@U0HSBOT001> <https://evil.example|click>"
    world.sb.modify("salesforce", "Account", acc["account_id"][3:], {"Name": evil})
    scores = scores_frame(accounts, {acc["account_id"]: {**RED, "name": evil, "drivers": "<!here> logins down; *bold* <#C123>"}})
    run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1")
    mark = len(world.sb.slack_messages())
    assert escalate(world, store, scores).alerts_sent == 1
    [msg] = new_messages(world, mark)
    raw = json.dumps({"text": msg["text"], "blocks": msg["blocks"]})
    for control in ("<!channel>", "<!here>", "<@U0HSBOT001>", "<https://evil", "<#C123>"):
        assert control not in raw
    assert "&lt;!channel&gt; Acme &amp; &lt;@U0HSBOT001&gt;" in msg["text"]
    assert "&lt;!here&gt; logins down" in raw


def test_owner_without_slack_user_goes_to_the_segment_fallback_channel(world, store, accounts):
    acc = pick(accounts, "salesforce", 2)
    scores = scores_frame(accounts, {acc["account_id"]: {**RED, "owner_email": "left.company@example.com", "segment": "smb"}})
    run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1")
    mark = len(world.sb.slack_messages())
    result = escalate(world, store, scores)
    assert (result.alerts_sent, result.errors) == (1, [])
    [msg] = new_messages(world, mark)
    assert msg["channel_name"] == "#cs-smb"
    assert "no Slack user has the email left.company@example.com" in json.dumps(msg["blocks"])


def test_a_crash_after_sending_never_sends_twice(world, store, accounts):
    acc = pick(accounts, "hubspot", 1)
    scores = scores_frame(accounts, {acc["account_id"]: RED})
    run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1")
    mark = len(world.sb.slack_messages())

    def crash(point):
        if point == "after_slack_send":
            raise RuntimeError("killed after send")

    with pytest.raises(RuntimeError):
        escalate(world, store, scores, hooks=crash)
    assert len(new_messages(world, mark)) == 1
    assert [m["kind"] for m in pending_markers(store)] == ["alert"]  # visible as "maybe sent"
    shown = status(store)
    assert shown["queues"]["slack_maybe_sent"] == 1 and shown["slack_maybe_sent"][0]["kind"] == "alert"
    assert escalate(world, store, scores).alerts_sent == 0
    assert len(new_messages(world, mark)) == 1


def test_dry_run_sends_and_records_nothing(world, store, accounts):
    acc = pick(accounts, "salesforce", 3)
    scores = scores_frame(accounts, {acc["account_id"]: RED})
    run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1")
    mark = len(world.sb.slack_messages())
    result = escalate(world, store, scores, dry_run=True)
    assert result.alerts_sent == 1 and result.planned[0]["kind"] == "alert"
    assert new_messages(world, mark) == [] and store.count("escalations") == 0


def test_a_due_date_moved_in_the_crm_moves_the_sla_clock(world, store, accounts):
    acc = pick(accounts, "salesforce", 4)
    scores = scores_frame(accounts, {acc["account_id"]: RED})
    run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1")
    escalate(world, store, scores)
    ep = episode_row(store)
    moved = (pd.Timestamp(ep["task_due_at"]) + timedelta(days=3)).date().isoformat()
    world.sb.modify("salesforce", "Task", ep["task_id"], {"ActivityDate": moved})
    world.sb.advance_clock(30 * 3600)  # past the original due time: not escalated, the CRM says later
    assert escalate(world, store, scores).escalations == 0
    # Salesforce due dates are dates: the moved task is due by the end of that day
    world.sb.advance_clock(4 * 24 * 3600)
    assert escalate(world, store, scores).escalations == 1


def test_escalate_alone_reads_facts_from_the_state_store(world, store, accounts):
    """`healthsync escalate` has no scores frame: the message still names the account (replica + history)."""
    acc = pick(accounts, "hubspot", 2)
    scores = scores_frame(accounts, {acc["account_id"]: RED})
    run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1")
    mark = len(world.sb.slack_messages())
    result = escalate(world, store, None)
    assert result.alerts_sent == 1
    [msg] = new_messages(world, mark)
    assert msg["channel"] == dm(world, acc["owner_email"])


def test_several_alerts_for_one_owner_in_one_run_go_as_one_digest(world, store, accounts):
    sf = accounts[accounts["crm"] == "salesforce"]
    owner = sf.iloc[10]["owner_email"]
    others = {0, 1, 2, 3, 4, 20, 21, 22, 30}  # accounts other tests of this module use (their tasks would be adopted)
    free = sf.iloc[[i for i in range(len(sf)) if i not in others]]
    mine = free[free["owner_email"] == owner].iloc[:3]
    evil = "<!channel> Digest Co"
    overrides = {a: RED for a in mine["account_id"]}
    overrides[mine.iloc[0]["account_id"]] = {**RED, "name": evil, "score": 12.0}
    scores = scores_frame(accounts, overrides)
    assert run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1").tasks_created == 3
    mark = len(world.sb.slack_messages())
    result = escalate(world, store, scores)
    assert (result.alerts_sent, result.alert_episodes, result.errors) == (1, 3, [])  # one message carrying three episodes
    [digest] = new_messages(world, mark)
    assert digest["channel"] == dm(world, owner)
    assert digest["text"] == "3 new playbook tasks"
    body = json.dumps(digest["blocks"])
    assert "<!channel>" not in body and "&lt;!channel&gt; Digest Co" in body
    assert body.index("Digest Co") < body.index(mine.iloc[1]["name"])  # most at risk first
    assert store.count("escalations", kind="alert") == 3
    assert escalate(world, store, scores).alerts_sent == 0 and new_messages(world, mark) == [digest]


def test_slack_faults_are_retried_without_duplicate_messages(world, store, accounts):
    from healthsync.connectors.retry import RetryPolicy
    from healthsync.connectors.slack import slack_from_ready

    picked = pd.concat([accounts[accounts["crm"] == "salesforce"].iloc[20:23], accounts[accounts["crm"] == "hubspot"].iloc[20:23]])
    scores = scores_frame(accounts, {a: RED for a in picked["account_id"]})
    assert run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1").tasks_created == 6
    recipients = set(picked["owner_email"].str.lower())
    slack = slack_from_ready(world.sb.ready, retry=RetryPolicy(base_wait=0.01, max_wait=0.05, max_attempts=8))
    mark = len(world.sb.slack_messages())
    world.sb.set_faults(api="slack", error_rate=0.3, drop_rate=0.2, burst_429=1)
    # every 5xx is ambiguous and is settled with a conversations.history read: as an internal app (Tier 3)
    # those reads are not held to the non-Marketplace 1 a minute (tests/connectors/test_slack_exactly_once.py)
    world.sb.slack.app_type = "internal"
    try:
        result = run_escalation(store, world.settings, slack, world.connectors, world.now(), "esc", scores=scores, owners=world.owners)
    finally:
        world.sb.clear_faults()
        world.sb.slack.app_type = "non_marketplace"
    assert (result.alerts_sent, result.alert_episodes, result.errors) == (len(recipients), 6, [])
    assert slack.stats.retries >= 1  # the faults did hit
    sent = new_messages(world, mark)
    assert sorted(m["channel"] for m in sent) == sorted(dm(world, e) for e in recipients)  # one per owner, none twice
    assert pending_markers(store) == []
    assert escalate(world, store, scores).alerts_sent == 0 and len(new_messages(world, mark)) == len(recipients)


def test_a_yellow_at_risk_account_has_a_week_and_reaches_the_vp_only_if_it_turns_red(world, store, accounts):
    acc = pick(accounts, "salesforce", 30)
    yellow = scores_frame(accounts, {acc["account_id"]: {"score": 45.0, "band": "Yellow"}})  # < 50: at risk, but Yellow
    now = world.now()
    assert run_playbooks(store, world.settings, yellow, world.connectors, now, "r1").tasks_created == 1
    ep = episode_row(store)
    assert pd.Timestamp(ep["task_due_at"]) == pd.Timestamp(now + timedelta(hours=168)).tz_localize(None)
    task = next(t for t in world.sb.records("salesforce", "Task") if t["Id"] == ep["task_id"])
    assert task["ActivityDate"] == (now + timedelta(hours=168)).date().isoformat()
    escalate(world, store, yellow)
    world.sb.advance_clock(167 * 3600)
    assert escalate(world, store, yellow).escalations == 0
    world.sb.advance_clock(2 * 3600)
    assert escalate(world, store, yellow).escalations == 1  # the manager
    world.sb.advance_clock(60 * 3600)
    assert escalate(world, store, yellow).escalations == 0  # Yellow stops at the manager
    red = scores_frame(accounts, {acc["account_id"]: {**RED, "score": 38.0}})
    assert escalate(world, store, red).escalations == 1  # trending into Red: the VP
