"""Playbooks on crossings and a workload people can carry (issue 14 item 6), against the sandbox.

The real connectors create the tasks through simple-salesforce and hubspot-api-client; the
assertions read the emulated CRMs' records and the Slack messages the emulator received.
"""

import json
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "playbooks"))
from sandbox_world import RED, World, open_store, scores_frame, settings_for, start_world, accounts, store  # noqa: E402,F401 (accounts, store: fixtures)

from healthsync.playbooks.definitions import PACKAGED_DEFINITIONS  # noqa: E402
from healthsync.sync.escalation import run_escalation  # noqa: E402
from healthsync.sync.playbooks_job import run_playbooks  # noqa: E402

#: the owners with the most accounts in both sandbox CRMs (14 + 14, 13 + 13): the cap tests' CSMs
BUSY_OWNER = "ana.lopez@example.com"
LANES_OWNER = "hugo.lopez@example.com"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = start_world(tmp_path_factory.mktemp("world"))
    yield w
    w.close()


def others(accounts: pd.DataFrame, crm: str, i: int) -> dict:
    """The i-th account of `crm` NOT owned by the cap tests' owners (so tests never share an account)."""
    rows = accounts[(accounts["crm"] == crm) & ~accounts["owner_email"].str.lower().isin([BUSY_OWNER, LANES_OWNER])]
    return rows.iloc[i].to_dict()


def crm_tasks(world: World, prefix: str) -> list[str]:
    """Keys of the healthsync tasks in both emulated CRMs starting with `prefix`."""
    sf = [t["Healthsync_Key__c"] for t in world.sb.records("salesforce", "Task") if (t.get("Healthsync_Key__c") or "").startswith(prefix)]
    hs = [t["properties"]["healthsync_key"] for t in world.sb.records("hubspot", "tasks")
          if (t["properties"].get("healthsync_key") or "").startswith(prefix)]
    return sf + hs


def episodes(store) -> pd.DataFrame:
    t = store.tables["episodes"]
    with store.engine.connect() as conn:
        return pd.DataFrame([dict(r) for r in conn.execute(select(t)).mappings()], columns=[c.name for c in t.columns])


def test_given_a_first_run_then_accounts_already_at_risk_or_near_renewal_open_and_accounts_already_at_80_do_not(world, store, accounts):
    red = others(accounts, "salesforce", 0)
    renewal = others(accounts, "hubspot", 0)
    green = others(accounts, "salesforce", 1)
    scores = scores_frame(accounts, {red["account_id"]: RED, green["account_id"]: {"score": 90.0, "band": "Green"},
                                     renewal["account_id"]: {"score": 60.0}})
    scores.loc[scores["account_id"] == renewal["account_id"], "renewal_date"] = pd.Timestamp(world.now().date() + timedelta(days=30))

    result = run_playbooks(store, world.settings, scores, world.connectors, world.now(), "first")

    assert result.errors == [] and result.tasks_created == 2
    opened = episodes(store)
    assert sorted(zip(opened["playbook"], opened["account_id"])) == sorted(
        [("at_risk_intervention", red["account_id"]), ("renewal_risk", renewal["account_id"])]
    )
    assert len(crm_tasks(world, f"at_risk_intervention:{red['account_id']}:")) == 1
    assert len(crm_tasks(world, f"renewal_risk:{renewal['account_id']}:")) == 1
    assert crm_tasks(world, f"expansion_opportunity:{green['account_id']}:") == []  # already at 80+: not a crossing


def test_given_crossing_trigger_then_a_playbook_fires_only_when_its_condition_turns_true(world, store, accounts):
    acc = others(accounts, "salesforce", 2)
    aid = acc["account_id"]
    at = lambda score, band: scores_frame(accounts, {aid: {"score": score, "band": band}})  # noqa: E731

    def run(scores, run_id):
        r = run_playbooks(store, world.settings, scores, world.connectors, world.now(), run_id)
        assert r.errors == []
        return r.episodes_opened

    assert run(at(90.0, "Green"), "r1") == 0  # already at 80+ when first seen
    assert run(at(92.0, "Green"), "r2") == 0  # still there: no crossing
    assert run(at(65.0, "Yellow"), "r3") == 0
    assert run(at(85.0, "Green"), "r4") == 1  # improves to 80+: seed 001's crossing
    assert run(at(88.0, "Green"), "r5") == 0  # holding is not crossing again
    assert len(crm_tasks(world, f"expansion_opportunity:{aid}:")) == 1
    assert run(at(45.0, "Yellow"), "r6") == 1  # drops below 50: at risk opens (and expansion closes)
    assert len(crm_tasks(world, f"at_risk_intervention:{aid}:")) == 1
    ep = episodes(store).set_index("playbook")
    assert ep.loc["expansion_opportunity", "status"] == "closed" and ep.loc["at_risk_intervention", "status"] == "open"


def test_given_trigger_state_then_the_playbook_opens_whenever_its_condition_holds(world, tmp_path, accounts):
    spec = yaml.safe_load(PACKAGED_DEFINITIONS.read_text())
    for pb in spec["playbooks"]:
        if pb["name"] == "expansion_opportunity":
            pb["trigger"] = "state"
    (tmp_path / "templates").mkdir()
    path = tmp_path / "playbooks.yaml"
    path.write_text(yaml.safe_dump(spec))
    settings = settings_for(tmp_path, playbooks={"definitions": str(path)})
    acc = others(accounts, "hubspot", 1)
    scores = scores_frame(accounts, {acc["account_id"]: {"score": 90.0, "band": "Green"}})
    store = open_store(settings.state.url)
    try:
        first = run_playbooks(store, settings, scores, world.connectors, world.now(), "s1")
        assert (first.episodes_opened, first.tasks_created, first.errors) == (1, 1, [])
        assert run_playbooks(store, settings, scores, world.connectors, world.now(), "s2").episodes_opened == 0  # one open at a time
    finally:
        store.close()
    assert len(crm_tasks(world, f"expansion_opportunity:{acc['account_id']}:")) == 1


def test_given_24_new_tasks_for_one_owner_then_10_go_out_highest_arr_first_and_the_queue_follows_on_the_next_days(world, store, accounts, tmp_path):
    mine = accounts[accounts["owner_email"].str.lower() == BUSY_OWNER].iloc[:24].copy()
    assert len(mine) == 24 and set(mine["crm"]) == {"salesforce", "hubspot"}  # one owner across both CRMs
    mine["arr"] = [1000.0 * (k + 1) for k in range(24)]  # distinct ARR: the order is known
    overrides = {a: {**RED, "arr": arr} for a, arr in zip(mine["account_id"], mine["arr"])}
    scores = scores_frame(accounts, overrides)
    by_arr = list(mine.sort_values("arr", ascending=False)["account_id"])
    assert world.settings.playbooks.max_new_tasks_per_owner_per_day == 10  # the default

    def tasked() -> set[str]:
        return {k.split(":", 1)[1].rsplit(":", 1)[0] for k in crm_tasks(world, "at_risk_intervention:")} & set(mine["account_id"])

    # day 1: ten tasks, the highest ARR first; fourteen wait
    day1 = run_playbooks(store, world.settings, scores, world.connectors, world.now(), "d1")
    assert (day1.tasks_created, day1.tasks_queued, day1.episodes_opened, day1.errors) == (10, 14, 24, [])
    assert tasked() == set(by_arr[:10])
    mark = len(world.sb.slack_messages())
    alerted = run_escalation(store, world.settings, world.slack, world.connectors, world.now(), "e1", scores=scores, owners=world.owners)
    assert (alerted.alerts_sent, alerted.alert_episodes, alerted.errors) == (1, 10, [])  # one digest carrying ten episodes
    [digest] = world.sb.slack_messages()[mark:]
    assert digest["text"] == "10 new playbook tasks, 14 queued"
    assert "14 more playbook tasks queued" in json.dumps(digest["blocks"])

    # a later run the same day adds nothing: the owner's ten are used up
    again = run_playbooks(store, world.settings, scores, world.connectors, world.now(), "d1b")
    assert (again.tasks_created, again.tasks_queued) == (0, 14)

    # the state is lost the same day: the ten tasks are adopted and count as today's, nothing more goes out
    lost = open_store(f"sqlite:///{tmp_path}/lost.db")
    try:
        relost = run_playbooks(lost, world.settings, scores, world.connectors, world.now(), "d1-lost")
    finally:
        lost.close()
    assert (relost.tasks_created, relost.tasks_adopted, relost.tasks_queued, relost.errors) == (0, 10, 14, [])
    assert tasked() == set(by_arr[:10])

    # day 2: the next ten by ARR; one queued account recovered meanwhile and closes without a task
    world.sb.advance_clock(24 * 3600)
    recovered = by_arr[23]
    day2_scores = scores_frame(accounts, {a: v for a, v in overrides.items() if a != recovered})
    day2 = run_playbooks(store, world.settings, day2_scores, world.connectors, world.now(), "d2")
    assert (day2.tasks_created, day2.tasks_queued, day2.episodes_closed, day2.errors) == (10, 3, 1, [])
    assert tasked() == set(by_arr[:20])

    # day 3: the rest
    world.sb.advance_clock(24 * 3600)
    day3 = run_playbooks(store, world.settings, day2_scores, world.connectors, world.now(), "d3")
    assert (day3.tasks_created, day3.tasks_queued) == (3, 0)
    assert tasked() == set(by_arr[:23])
    assert len(crm_tasks(world, "at_risk_intervention:")) == len(set(crm_tasks(world, "at_risk_intervention:")))  # none twice
    closed = episodes(store).set_index("account_id").loc[recovered]
    assert (closed["status"], closed["close_reason"]) == ("closed", "condition_cleared") and pd.isna(closed["task_id"])


def test_given_one_run_per_crm_lane_then_the_cap_still_orders_both_crms_by_arr(world, store, accounts):
    mine = accounts[accounts["owner_email"].str.lower() == LANES_OWNER].iloc[:24].copy()
    assert len(mine) == 24 and set(mine["crm"]) == {"salesforce", "hubspot"}
    mine["arr"] = [1000.0 * (k + 1) for k in range(24)]
    scores = scores_frame(accounts, {a: {**RED, "arr": arr} for a, arr in zip(mine["account_id"], mine["arr"])})
    top = set(mine.sort_values("arr", ascending=False)["account_id"][:10])
    now = world.now()
    lanes = [run_playbooks(store, world.settings, scores, {crm: world.connectors[crm]}, now, "lanes", crms=[crm])
             for crm in ("salesforce", "hubspot")]  # as `healthsync run` does: one CRM after the other
    assert all(r.errors == [] for r in lanes)
    assert (sum(r.tasks_created for r in lanes), sum(r.tasks_queued for r in lanes)) == (10, 14)
    tasked = {k.split(":", 1)[1].rsplit(":", 1)[0] for k in crm_tasks(world, "at_risk_intervention:")} & set(mine["account_id"])
    assert tasked == top  # the ten highest ARR of both CRMs, not the first lane's ten
