"""Faults and crashes: runs converge to exactly the desired CRM state, with no duplicate task or message."""

from __future__ import annotations

import random

import pytest

from healthsync.sync.run import run_cycle

from e2e_helpers import assert_crm_matches_pushed, assert_no_duplicate_messages, assert_no_duplicate_tasks, writes

# Slack loses answers too: a keyed chat.postMessage whose answer is lost is found again with
# conversations.history (message metadata) instead of being posted twice.
FAULTS = (
    "all.error_rate=0.1,all.drop_rate=0.03,salesforce.lost_response_rate=0.05,hubspot.lost_response_rate=0.05,"
    "slack.lost_response_rate=0.05,"
    "salesforce.burst_429=3,salesforce.burst_every=40,hubspot.burst_429=4,hubspot.burst_every=40,slack.burst_429=2,slack.burst_every=30"
)


def _assert_converged(sb, settings, store) -> None:
    """A clean run afterwards wants nothing; the CRM holds exactly what was confirmed."""
    sb.clear_faults()
    seq = sb.requests()["last_seq"]
    final = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert final.status == "ok", final.errors
    assert writes(sb.requests(since=seq)["requests"]) == [], "a converged state needs no further write"
    assert final.tasks_created == 0 and final.alerts_sent == 0 and final.escalations == 0
    assert store.failed_queue() == {}
    assert assert_crm_matches_pushed(sb, store) > 0
    # every account of both CRMs carries a confirmed score
    for crm in ("salesforce", "hubspot"):
        live = store.live_ids(crm, "accounts")
        confirmed = store.pushed_values(crm, "accounts")
        assert live and all(rid in confirmed for rid in live)
    tasks = assert_no_duplicate_tasks(sb)
    assert_no_duplicate_messages(sb, store)
    open_keys = {k for (k,) in store.engine.connect().execute(
        __import__("sqlalchemy").text("select task_key from episodes where status = 'open' and task_id is not null"))}
    assert open_keys <= {k for _, k in tasks}


def test_given_injected_faults_when_rerun_then_crm_converges_without_duplicates(make_sandbox, settings, store_of):
    # every lost answer or 5xx on a keyed post is settled with a conversations.history read: as an internal
    # app (Tier 3) those are not held to the non-Marketplace 1 a minute (tested in tests/e2e/test_slack_exactly_once_e2e.py)
    sb = make_sandbox(accounts=40, seed=21, faults=FAULTS, slack_app_type="internal")
    statuses = []
    for _ in range(3):
        summary = run_cycle(settings, ready=sb.ready, json_mode=True)
        statuses.append(summary.status)
        assert summary.status in ("ok", "record_errors", "stopped"), summary.errors
        if summary.status == "ok":
            break
    faults = sb.requests()["requests"]
    assert any(r["fault"] for r in faults), "the faults were injected"
    _assert_converged(sb, settings, store_of(settings))


class Crash(Exception):
    """Stands for the process being killed at a hook point."""


def test_given_crashes_at_random_points_when_rerun_then_converges_without_duplicates(make_sandbox, settings, store_of):
    sb = make_sandbox(accounts=40, seed=31)
    rng = random.Random(5)
    # each run dies at one point, the k-th time the point is reached (k random, within what a run reaches)
    plan = [("after_push_batch", rng.randint(1, 3)), ("after_task_create", rng.randint(1, 3)),
            ("after_slack_send", rng.randint(1, 3)), ("after_pull", 1), ("before_record", 1)]
    crashed = []
    for point, k in plan:
        seen = {"n": 0}

        def hooks(p, point=point, k=k, seen=seen):
            if p == point:
                seen["n"] += 1
                if seen["n"] == k:
                    raise Crash(p)

        try:
            summary = run_cycle(settings, ready=sb.ready, json_mode=True, hooks=hooks)
        except Crash as exc:
            crashed.append(str(exc))
        else:
            assert summary.status == "ok", summary.errors
    assert {"after_push_batch", "after_pull", "before_record"} <= set(crashed), crashed
    store = store_of(settings)
    runs = store.recent_runs(20)
    assert sum(r["status"] == "failed" for r in runs) == len(crashed)  # a crash is recorded, never "ok"
    _assert_converged(sb, settings, store)
