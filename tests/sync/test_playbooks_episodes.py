"""Episode lifecycle against the sandbox with the real connectors: one task per episode, whatever happens."""

import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "playbooks"))
from sandbox_world import RED, World, scores_frame, start_world, accounts, store  # noqa: E402,F401 (accounts, store: fixtures)

from healthsync.sync.playbooks_job import PlanningReads, _conditions, _episodes, plan_playbooks, run_playbooks  # noqa: E402
from healthsync.sync.task_mirror import apply_changes, episode_changes, read_tasks  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = start_world(tmp_path_factory.mktemp("world"))
    yield w
    w.close()


def sf_tasks(world: World, key_prefix: str) -> list[dict]:
    return [t for t in world.sb.records("salesforce", "Task") if (t.get("Healthsync_Key__c") or "").startswith(key_prefix) and not t.get("IsDeleted")]


def hs_tasks(world: World, key_prefix: str) -> list[dict]:
    return [t for t in world.sb.records("hubspot", "tasks") if (t["properties"].get("healthsync_key") or "").startswith(key_prefix) and not t.get("archived")]


def episodes(store) -> pd.DataFrame:
    t = store.tables["episodes"]
    with store.engine.connect() as conn:
        return pd.DataFrame([dict(r) for r in conn.execute(select(t)).mappings()])


def pick(accounts: pd.DataFrame, crm: str, i: int) -> dict:
    return accounts[accounts["crm"] == crm].iloc[i].to_dict()


def test_given_triggered_accounts_when_run_twice_then_one_task_each_with_owner_due_and_priority(world, store, accounts):
    red = pick(accounts, "salesforce", 0)
    healthy = pick(accounts, "hubspot", 0)
    scores = scores_frame(accounts, {red["account_id"]: RED, healthy["account_id"]: {"score": 85.0, "band": "Green"}})
    # a scored run where nothing holds: the next run's changes are crossings (expansion fires only on one)
    assert run_playbooks(store, world.settings, scores_frame(accounts), world.connectors, world.now(), "run-0").episodes_opened == 0
    now = world.now()

    first = run_playbooks(store, world.settings, scores, world.connectors, now, "run-1")
    assert (first.tasks_created, first.episodes_opened, first.errors) == (2, 2, [])

    sf = sf_tasks(world, f"at_risk_intervention:{red['account_id']}:")
    assert len(sf) == 1
    users = {u["Id"]: u["Email"] for u in world.sb.records("salesforce", "User")}
    assert sf[0]["WhatId"] == red["account_id"][3:]
    assert users[sf[0]["OwnerId"]] == red["owner_email"]
    assert sf[0]["Priority"] == "High" and sf[0]["Status"] == "Not Started"
    assert sf[0]["ActivityDate"] == (now + timedelta(hours=24)).date().isoformat()  # seed 003: Red within 24 h
    assert sf[0]["Subject"] == f"At-risk: {red['name']} health 30 (Red)"
    assert "- Logins down to 0.4/user/week" in sf[0]["Description"]

    hs = hs_tasks(world, f"expansion_opportunity:{healthy['account_id']}:")
    assert len(hs) == 1
    props = hs[0]["properties"]
    assert props["hs_task_priority"] == "MEDIUM" and props["hs_task_status"] == "NOT_STARTED"
    owners = {str(o["id"]): o["email"] for o in world.sb.hubspot.owners}
    assert owners[props["hubspot_owner_id"]] == healthy["owner_email"]
    due = pd.Timestamp(int(props["hs_timestamp"]), unit="ms", tz="UTC") if str(props["hs_timestamp"]).isdigit() else pd.Timestamp(props["hs_timestamp"])
    assert abs((due - pd.Timestamp(now + timedelta(hours=168))).total_seconds()) < 1  # seed 000: within 1 week
    assert hs[0]["associations"].get("companies") == [healthy["account_id"][3:]]

    ep = episodes(store).set_index("playbook")
    assert ep.loc["at_risk_intervention", "task_id"] == sf[0]["Id"]
    assert ep.loc["at_risk_intervention", "task_status"] == "open"

    second = run_playbooks(store, world.settings, scores, world.connectors, world.now(), "run-2")
    assert (second.tasks_created, second.episodes_opened, second.episodes_closed) == (0, 0, 0)
    assert len(sf_tasks(world, f"at_risk_intervention:{red['account_id']}:")) == 1
    assert len(hs_tasks(world, f"expansion_opportunity:{healthy['account_id']}:")) == 1
    assert len(episodes(store)) == 2


@pytest.mark.parametrize("crash_at", ["after_episodes_recorded", "before_task_record"])
def test_given_a_crash_between_recording_and_storing_the_task_when_rerun_then_exactly_one_task(world, store, accounts, crash_at):
    i = 1 if crash_at == "after_episodes_recorded" else 2
    red = pick(accounts, "salesforce", i)
    red_hs = pick(accounts, "hubspot", i)
    scores = scores_frame(accounts, {red["account_id"]: RED, red_hs["account_id"]: RED})

    def crash(point):
        if point == crash_at:
            raise RuntimeError(f"killed at {point}")

    with pytest.raises(RuntimeError, match="killed"):
        run_playbooks(store, world.settings, scores, world.connectors, world.now(), "run-1", hooks=crash)
    pending = episodes(store)
    assert len(pending) == 2 and pending["task_id"].isna().all()  # recorded BEFORE the task
    before = len(sf_tasks(world, f"at_risk_intervention:{red['account_id']}:")) + len(hs_tasks(world, f"at_risk_intervention:{red_hs['account_id']}:"))
    # killed after the first CRM's tasks were created but before they were recorded: one exists, one not yet
    assert before == (0 if crash_at == "after_episodes_recorded" else 1)

    rerun = run_playbooks(store, world.settings, scores, world.connectors, world.now(), "run-2")
    assert rerun.errors == [] and rerun.episodes_opened == 0
    assert rerun.tasks_created == (2 if crash_at == "after_episodes_recorded" else 1)
    assert len(sf_tasks(world, f"at_risk_intervention:{red['account_id']}:")) == 1
    assert len(hs_tasks(world, f"at_risk_intervention:{red_hs['account_id']}:")) == 1
    assert episodes(store)["task_id"].notna().all()


def test_given_condition_clears_then_episode_closes_and_a_new_breach_opens_a_new_task(world, store, accounts):
    acc = pick(accounts, "salesforce", 3)
    red = scores_frame(accounts, {acc["account_id"]: RED})
    fine = scores_frame(accounts)
    assert run_playbooks(store, world.settings, red, world.connectors, world.now(), "r1").tasks_created == 1
    cleared = run_playbooks(store, world.settings, fine, world.connectors, world.now(), "r2")
    assert (cleared.episodes_closed, cleared.tasks_created) == (1, 0)
    closed = episodes(store)
    assert closed.loc[0, "status"] == "closed" and closed.loc[0, "close_reason"] == "condition_cleared"
    # a new breach while the owner's task is still open in the CRM: that task is taken up again, not doubled
    again = run_playbooks(store, world.settings, red, world.connectors, world.now(), "r3")
    assert (again.episodes_opened, again.tasks_created, again.tasks_adopted) == (1, 0, 1)
    assert episodes(store).loc[0, "status"] == "open"
    [task] = sf_tasks(world, f"at_risk_intervention:{acc['account_id']}:")
    # once the owner completed it, clearing and breaching again makes a new episode with a new task and key
    world.sb.modify("salesforce", "Task", task["Id"], {"Status": "Completed"})
    done = run_playbooks(store, world.settings, red, world.connectors, world.now(), "r4")
    assert (done.episodes_closed, done.episodes_opened) == (1, 0)  # completed while still Red: not re-opened
    assert run_playbooks(store, world.settings, fine, world.connectors, world.now(), "r5").episodes_opened == 0
    fresh = run_playbooks(store, world.settings, red, world.connectors, world.now(), "r6")
    assert (fresh.episodes_opened, fresh.tasks_created) == (1, 1)
    keys = sorted(episodes(store)["task_key"])
    assert keys[1] == keys[0] + ".2"  # same day, a new episode, a new key
    assert len(sf_tasks(world, f"at_risk_intervention:{acc['account_id']}:")) == 2


def test_given_unknown_score_then_open_episode_is_neither_closed_nor_duplicated(world, store, accounts):
    acc = pick(accounts, "hubspot", 3)
    assert run_playbooks(store, world.settings, scores_frame(accounts, {acc["account_id"]: RED}), world.connectors, world.now(), "r1").tasks_created == 1
    unknown = scores_frame(accounts, {acc["account_id"]: {"score": None, "band": "Insufficient data"}})
    result = run_playbooks(store, world.settings, unknown, world.connectors, world.now(), "r2")
    assert (result.episodes_closed, result.episodes_opened) == (0, 0)
    missing = scores_frame(accounts)[lambda f: f["account_id"] != acc["account_id"]]
    assert run_playbooks(store, world.settings, missing, world.connectors, world.now(), "r3").episodes_closed == 0
    assert episodes(store).loc[0, "status"] == "open"


def test_dry_run_records_nothing_and_creates_nothing(world, store, accounts):
    acc = pick(accounts, "salesforce", 4)
    scores = scores_frame(accounts, {acc["account_id"]: {"score": 90.0, "band": "Green"}})
    run_playbooks(store, world.settings, scores_frame(accounts), world.connectors, world.now(), "r0")
    remembered = store.count("playbook_conditions")
    result = run_playbooks(store, world.settings, scores, world.connectors, world.now(), "dry", dry_run=True)
    assert (result.episodes_opened, result.tasks_created) == (1, 0)
    assert result.planned[0]["playbook"] == "expansion_opportunity" and result.planned[0]["account_id"] == acc["account_id"]
    assert store.count("episodes") == 0
    assert store.count("playbook_conditions") == remembered and store.count("playbook_conditions", holds=True) == 0
    assert sf_tasks(world, f"expansion_opportunity:{acc['account_id']}:") == []


def test_crm_text_with_template_syntax_is_written_literally(world, store, accounts):
    acc = pick(accounts, "salesforce", 5)
    name = "{{ 7*7 }} {% raw %}<!channel> Acme"
    scores = scores_frame(accounts, {acc["account_id"]: {**RED, "name": name, "drivers": "{{ config }}; <@U123> pinged"}})
    assert run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1").tasks_created == 1
    task = sf_tasks(world, f"at_risk_intervention:{acc['account_id']}:")[0]
    assert task["Subject"] == f"At-risk: {name} health 30 (Red)"
    assert "- {{ config }}\n- <@U123> pinged" in task["Description"]


def test_missing_connector_is_reported_and_the_episode_waits(world, store, accounts):
    acc = pick(accounts, "hubspot", 5)
    scores = scores_frame(accounts, {acc["account_id"]: RED})
    only_sf = {"salesforce": world.connectors["salesforce"]}
    result = run_playbooks(store, world.settings, scores, only_sf, world.now(), "r1")
    assert result.tasks_created == 0 and result.errors == ["hubspot: 1 playbook task(s) not created: no hubspot connector in this run"]
    later = run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r2")
    assert (later.tasks_created, later.episodes_opened) == (1, 0)


def test_given_episodes_read_before_the_read_back_then_the_plan_sees_what_a_read_in_place_sees(world, store, accounts):
    """A run reads every episode and condition beside its pull (PlanningReads), before the task read-back
    changes episodes: those rows, with the read-back's changes applied, are the rows the state then holds."""
    done_acc, moved_acc, kept_acc = (pick(accounts, "salesforce", i) for i in (6, 7, 8))
    red = scores_frame(accounts, {a["account_id"]: RED for a in (done_acc, moved_acc, kept_acc)})
    assert run_playbooks(store, world.settings, red, world.connectors, world.now(), "r1").tasks_created == 3
    [done] = sf_tasks(world, f"at_risk_intervention:{done_acc['account_id']}:")
    [moved] = sf_tasks(world, f"at_risk_intervention:{moved_acc['account_id']}:")
    world.sb.modify("salesforce", "Task", done["Id"], {"Status": "Completed"})
    world.sb.modify("salesforce", "Task", moved["Id"], {"ActivityDate": "2031-01-15"})

    ahead = PlanningReads(store).start()  # as sync/run.py: before anything of the run reads tasks back
    rows, conditions = ahead.take()
    assert ahead.take() is None  # taken once: a second plan of the run reads what the first one recorded
    now = world.now()
    read = read_tasks(store, world.connectors, now)
    changes = episode_changes(store, read, now, "task_completed", episodes=rows)
    assert changes == episode_changes(store, read, now, "task_completed")
    assert sorted(c.get("status", "open") for c in changes.values()) == ["closed", "open"]  # one completed, one moved
    apply_changes(store, changes)
    pd.testing.assert_frame_equal(rows.changed(changes).frame(), _episodes(store))
    assert conditions == _conditions(store) and len(conditions) >= 3

    ahead = PlanningReads(store).start()
    planned = plan_playbooks(store, world.settings, red, world.connectors, world.now(), "r2", prefetched=ahead)
    assert (planned.result.episodes_closed, planned.result.episodes_opened) == (0, 0)  # the read-back was stored above
    assert ahead.take() is None
    frame = episodes(store).set_index("task_key")
    assert (frame["status"] == "closed").sum() == 1 and frame["task_due_at"].dt.year.eq(2031).sum() == 1
