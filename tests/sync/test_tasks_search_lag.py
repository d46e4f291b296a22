"""HubSpot task idempotency while search lags behind writes (issue 12 item 5; issue 13 item 1).

The sandbox's HubSpot search hides records modified in the last 2 s of emulator time,
as real search does "for a few moments". Every test makes the old pre-create search
miss the tasks it exists to find; the product must still create each task exactly once.
"""

import sys
from pathlib import Path

import pytest
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "playbooks"))
from sandbox_world import RED, World, open_store, scores_frame, start_world, accounts, store  # noqa: E402,F401 (accounts, store: fixtures)

from healthsync.connectors.retry import RetryPolicy  # noqa: E402
from healthsync.sync.playbooks_job import run_playbooks  # noqa: E402

LAG_S = 2.0
FAST = RetryPolicy(max_attempts=8, max_total_seconds=30, base_wait=0.01, max_wait=0.1, max_retry_after=2, timeout=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = start_world(tmp_path_factory.mktemp("world"), sandbox_options={"search_lag_seconds": LAG_S},
                    connector_options={"retry": FAST})
    assert w.connectors["hubspot"].index_lag_s == LAG_S  # the ready file says how far search lags
    yield w
    w.close()


def hubspot_accounts(accounts, start: int, n: int) -> list[str]:
    return list(accounts[accounts["crm"] == "hubspot"]["account_id"].iloc[start : start + n])


def keys_in_hubspot(world: World, account_ids: list[str]) -> list[str]:
    wanted = tuple(f"at_risk_intervention:{a}:" for a in account_ids)
    return [t["properties"]["healthsync_key"] for t in world.sb.records("hubspot", "tasks")
            if not t["archived"] and (t["properties"].get("healthsync_key") or "").startswith(wanted)]


def task_ids(store) -> set[str]:
    t = store.tables["episodes"]
    with store.engine.connect() as conn:
        return {r.task_id for r in conn.execute(select(t.c.task_id))}


def key_searches(world: World, since: int) -> int:
    return sum(1 for r in world.sb.requests(since=since, api="hubspot")["requests"]
               if r["path"].rstrip("/").endswith("/objects/tasks/search"))


def test_given_a_lost_create_answer_then_the_key_is_looked_up_after_the_lag_and_never_created_twice(world, store, accounts):
    picked = hubspot_accounts(accounts, 0, 3)
    scores = scores_frame(accounts, {a: RED for a in picked})

    def lose_answers(point):
        if point == "after_episodes_recorded":  # the create (and the lookup after it) are applied, their answers lost
            world.sb.set_faults(api="hubspot", lost_response_next=2)

    seq = world.sb.requests()["last_seq"]
    try:
        result = run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1", hooks=lose_answers)
    finally:
        world.sb.clear_faults()
    assert (result.tasks_created, result.errors) == (3, [])
    keys = keys_in_hubspot(world, picked)
    assert len(keys) == 3 and len(set(keys)) == 3  # one task per episode
    ids = {t["id"] for t in world.sb.records("hubspot", "tasks") if t["properties"].get("healthsync_key") in keys}
    assert task_ids(store) == ids
    creates = [r for r in world.sb.requests(since=seq, api="hubspot")["requests"] if r["path"].rstrip("/").endswith("/tasks/batch/create")]
    assert len(creates) == 1 and creates[0]["fault"] == "lost_response"  # sent once, never blindly again


def test_given_a_crash_after_a_hubspot_create_then_a_rerun_inside_the_lag_finds_the_task(world, store, accounts):
    picked = hubspot_accounts(accounts, 3, 2)
    scores = scores_frame(accounts, {a: RED for a in picked})

    def crash(point):
        if point == "before_task_record":
            raise RuntimeError("killed before the task ids were recorded")

    with pytest.raises(RuntimeError, match="killed"):
        run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1", hooks=crash)
    assert len(keys_in_hubspot(world, picked)) == 2  # created, unrecorded, and not yet in search
    rerun = run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r2")
    assert rerun.errors == [] and rerun.episodes_opened == 0
    keys = keys_in_hubspot(world, picked)
    assert len(keys) == 2 and len(set(keys)) == 2
    assert None not in task_ids(store)


def test_given_the_state_lost_seconds_after_tasks_were_created_then_a_new_state_adopts_them(world, store, tmp_path, accounts):
    picked = hubspot_accounts(accounts, 5, 2)
    scores = scores_frame(accounts, {a: RED for a in picked})
    assert run_playbooks(store, world.settings, scores, world.connectors, world.now(), "r1").tasks_created == 2
    lost = open_store(f"sqlite:///{tmp_path}/elsewhere.db")  # a new, empty state right away
    try:
        again = run_playbooks(lost, world.settings, scores, world.connectors, world.now(), "r2")
        assert (again.tasks_created, again.tasks_adopted, again.errors) == (0, 2, [])
        assert task_ids(lost) == task_ids(store)
    finally:
        lost.close()
    keys = keys_in_hubspot(world, picked)
    assert len(keys) == 2 and len(set(keys)) == 2


def test_given_a_run_then_tasks_are_read_back_once_and_created_without_a_key_search(world, store, accounts):
    from healthsync.sync.escalation import run_escalation

    picked = hubspot_accounts(accounts, 7, 3)
    scores = scores_frame(accounts, {a: RED for a in picked})
    run_playbooks(store, world.settings, scores_frame(accounts), world.connectors, world.now(), "r0")  # the first, full read
    seq = world.sb.requests()["last_seq"]
    now = world.now()
    result = run_playbooks(store, world.settings, scores, world.connectors, now, "r1")
    alerts = run_escalation(store, world.settings, world.slack, world.connectors, now, "r1", scores=scores, owners=world.owners)
    assert (result.tasks_created, result.errors, alerts.errors) == (3, [], [])
    calls = world.sb.requests(since=seq, api="hubspot")["counts"].get("hubspot", {})
    # the minimum: one search (tasks changed since the last read, shared by both stages) and one batch create;
    # no key search before creating, no association read (the account is in the key), no owners reload
    assert calls == {"POST /crm/v3/objects/{type}/search": 1, "POST /crm/v3/objects/{type}/batch/{op}": 1}, calls
