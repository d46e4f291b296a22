"""The embedded sandbox's world lasts between runs: next to the state, one emulated day per run."""

from __future__ import annotations

from datetime import timedelta

import pytest

from healthsync.connectors.base import StopRunError
from healthsync.sync.demo_world import WORLD_FILE, open_demo_world, remove_world, world_path


def test_given_a_sqlite_state_then_the_world_file_sits_next_to_it_and_another_url_gets_its_own_place(tmp_path, monkeypatch):
    assert world_path(f"sqlite:///{tmp_path}/a/state.db") == tmp_path / "a" / WORLD_FILE
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    one, two = world_path("postgresql+psycopg://u@db/one"), world_path("postgresql+psycopg://u@db/two")
    assert one != two and one.name == WORLD_FILE and one.is_relative_to(tmp_path / "xdg")


def test_given_runs_one_after_another_then_each_is_a_day_later_with_a_few_accounts_changed_and_the_world_kept(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    first = open_demo_world(url, accounts=20, seed=4)
    try:
        assert (first.day, first.fresh, first.changes) == (1, True, [])
        clock1 = first.sandbox.clock.now()
        renamed = first.sandbox.records("salesforce", "Account")[0]["Id"]
        first.sandbox.modify("salesforce", "Account", renamed, {"Name": "Kept overnight"})
    finally:
        first.close()
    assert world_path(url).exists() and world_path(url).stat().st_mode & 0o077 == 0

    second = open_demo_world(url, accounts=20, seed=4)
    try:
        assert (second.day, second.fresh) == (2, False)
        assert timedelta(days=1) <= second.sandbox.clock.now() - clock1 < timedelta(days=1, minutes=1)
        assert second.sandbox.record("salesforce", "Account", renamed)["Name"] == "Kept overnight"
        assert len(second.changes) == 10 and {c.crm for c in second.changes} == {"salesforce", "hubspot"}
        assert any("demo day 2" in n for n in second.notes)
        edited = second.sandbox.record(second.changes[0].crm, "Account" if second.changes[0].crm == "salesforce" else "companies",
                                       second.changes[0].record_id)
        stamp = edited.get("SystemModstamp") or edited["properties"]["hs_lastmodifieddate"]
        assert stamp[:10] == str((clock1 + timedelta(hours=12)).date())  # edited during the day, before the run
    finally:
        second.close()
    third = open_demo_world(url, accounts=20, seed=4)
    third.close()
    assert third.day == 3 and third.changes != second.changes


def test_given_a_world_in_use_when_another_run_opens_it_then_that_run_stops_without_touching_it(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    first = open_demo_world(url, accounts=10, seed=4)
    try:
        with pytest.raises(StopRunError, match="another healthsync run is using the embedded sandbox"):
            open_demo_world(url, accounts=10, seed=4)
    finally:
        first.close()
    again = open_demo_world(url, accounts=10, seed=4)
    again.close()
    assert again.day == 2


def test_given_a_state_that_knows_no_earlier_demo_or_other_settings_then_a_new_world_starts(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    open_demo_world(url, accounts=10, seed=4).close()
    forgotten = open_demo_world(url, accounts=10, seed=4, state_knows_world=False)
    forgotten.close()
    assert (forgotten.day, forgotten.fresh) == (1, True)
    resized = open_demo_world(url, accounts=12, seed=4)
    resized.close()
    assert (resized.day, resized.fresh) == (1, True)
    assert any("changed since the saved demo world" in n for n in resized.notes)
    assert len(resized.sandbox.records("salesforce", "Account")) == 12


def test_given_a_damaged_world_file_then_a_new_world_starts_and_says_why(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    world_path(url).write_bytes(b"\x80\x05 garbage")
    world = open_demo_world(url, accounts=10, seed=4)
    world.close()
    assert world.fresh and any("could not be used" in n for n in world.notes)
    assert remove_world(url) == world_path(url) and not world_path(url).exists()
    assert remove_world(url) is None


def test_given_a_demo_state_when_reset_then_world_and_runs_are_gone_but_a_state_with_live_runs_is_refused(tmp_path):
    from datetime import datetime, timezone

    from healthsync.connectors.base import ConfigurationError
    from healthsync.sync.demo_world import reset_demo
    from healthsync.sync.state import open_store

    url = f"sqlite:///{tmp_path}/state.db"
    open_demo_world(url, accounts=10, seed=4).close()
    store = open_store(url)
    store.start_run("demo-1", "sandbox", datetime(2026, 12, 1, tzinfo=timezone.utc))
    store.close()
    assert reset_demo(url) == {"world_removed": str(world_path(url)), "runs_forgotten": 1, "state": str(tmp_path / "state.db")}
    assert not world_path(url).exists()
    store = open_store(url)
    assert store.recent_runs() == []
    store.start_run("real-1", "live", datetime(2026, 12, 1, tzinfo=timezone.utc))
    store.close()
    open_demo_world(url, accounts=10, seed=4).close()
    with pytest.raises(ConfigurationError, match="holds 1 run"):
        reset_demo(url)
    assert world_path(url).exists()
