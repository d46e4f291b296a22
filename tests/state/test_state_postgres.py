"""The state store on a real PostgreSQL server (started by the suite, tests/postgres_server.py).

Covers what a team running healthsync on PostgreSQL relies on: Alembic brings an empty database
to the newest revision and the result is exactly the tables the code queries; the run lease
keeps a second holder out; two runs started at once against the same state send nothing twice;
and `healthsync state migrate --to URL` carries a SQLite state over so the next run sends nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from healthsync.config.settings import load_settings
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.run import run_cycle
from healthsync.sync.state import head_revision, metadata, open_store

BIN = Path(sys.executable).with_name("healthsync")
T0 = datetime(2026, 1, 5, 6, 0, tzinfo=timezone.utc)
#: POST endpoints that only read (every other POST, and every PATCH/PUT/DELETE, changes something)
READ_POSTS = re.compile(r"(/search|/batch/read|oauth2/token|users\.lookupByEmail|conversations\.(open|history|list)|auth\.test|/query)")


def _settings(state_url: str):
    s = load_settings()
    s.state.url = state_url
    # every sandbox record was created seconds ago: the cursor alone finds what changed
    s.sources.salesforce.lookback_minutes = 0
    s.sources.hubspot.lookback_minutes = 0
    return s


@pytest.fixture
def sandbox():
    sb = Sandbox(accounts=30, seed=17, slack_message_interval_s=0).start()
    yield sb
    sb.stop()


def _sends(sb: Sandbox, since: int) -> list[dict]:
    """Requests after `since` that change something in a CRM or Slack (field writes, tasks, messages)."""
    return [r for r in sb.requests(since=since)["requests"]
            if r["method"] in ("PATCH", "PUT", "DELETE") or (r["method"] == "POST" and not READ_POSTS.search(r["path"]))]


def test_given_an_empty_postgresql_database_when_opened_then_alembic_brings_it_to_head_with_exactly_the_tables_the_code_queries(
    fresh_postgres_url,
):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = open_store(fresh_postgres_url)
    try:
        assert store.version() == head_revision()
        with store.engine.connect() as conn:
            assert conn.dialect.name == "postgresql"
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            assert {t.name for t in metadata.sorted_tables} <= set(inspect(conn).get_table_names())
        with store.begin() as conn:
            store.set_cursor(conn, "salesforce", "accounts", T0)
        assert store.migrate() == head_revision()  # idempotent: nothing rebuilt
        assert store.cursor("salesforce", "accounts") == T0
    finally:
        store.close()


def test_given_the_run_lease_on_postgresql_then_a_second_holder_waits_until_it_is_released_or_expires(fresh_postgres_url):
    store = open_store(fresh_postgres_url)
    try:
        assert store.acquire_lock("run_cycle", "run-a", 60, now=T0)
        assert not store.acquire_lock("run_cycle", "run-b", 60, now=T0 + timedelta(seconds=30))
        assert store.acquire_lock("run_cycle", "run-a", 60, now=T0 + timedelta(seconds=30))  # renewal
        assert store.acquire_lock("run_cycle", "run-b", 60, now=T0 + timedelta(seconds=120))  # expired: taken over
        store.release_lock("run_cycle", "run-a")  # not the holder any more: no effect
        assert not store.acquire_lock("run_cycle", "run-a", 60, now=T0 + timedelta(seconds=130))
        store.release_lock("run_cycle", "run-b")
        assert store.acquire_lock("run_cycle", "run-a", 60, now=T0 + timedelta(seconds=130))
    finally:
        store.close()


def test_given_the_lease_taken_by_many_workers_at_once_on_postgresql_then_exactly_one_gets_it(fresh_postgres_url):
    stores = [open_store(fresh_postgres_url) for _ in range(8)]  # one connection pool each, as separate workers
    winners, barrier = [], threading.Barrier(len(stores))

    def worker(store, name: str) -> None:
        barrier.wait(timeout=30)
        if store.acquire_lock("run_cycle", name, 600):
            winners.append(name)

    threads = [threading.Thread(target=worker, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for s in stores:
            s.close()
    assert len(winners) == 1, winners


def test_given_two_runs_started_at_once_on_postgresql_state_then_one_runs_the_other_stops_and_nothing_is_sent_twice(
    fresh_postgres_url, sandbox
):
    settings = _settings(fresh_postgres_url)
    first_inside, second_done = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def hold(point: str) -> None:  # the first run waits inside its cycle until the second has tried
        if point == "after_pull" and not first_inside.is_set():
            first_inside.set()
            assert second_done.wait(timeout=300), "the second run never finished"

    def first() -> None:
        results["first"] = run_cycle(settings, ready=sandbox.ready, json_mode=True, hooks=hold)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_inside.wait(timeout=300), "the first run never got inside its cycle"
        seq = sandbox.requests()["last_seq"]
        results["second"] = run_cycle(settings, ready=sandbox.ready, json_mode=True)
        sent_by_second = _sends(sandbox, seq)
    finally:
        second_done.set()
        thread.join(timeout=600)
    first_run, second_run = results["first"], results["second"]
    assert first_run.status == "ok", first_run.errors
    assert second_run.status == "stopped" and second_run.exit_code == 3
    assert "another healthsync run" in (second_run.stopped_reason or "")
    assert sent_by_second == []
    assert first_run.tasks_created > 0 and first_run.alerts_sent > 0

    seq = sandbox.requests()["last_seq"]
    again = run_cycle(settings, ready=sandbox.ready, json_mode=True)
    assert again.status == "ok", again.errors
    assert _sends(sandbox, seq) == [] and again.tasks_created == 0 and again.alerts_sent == 0
    store = open_store(fresh_postgres_url)
    try:
        statuses = sorted(r["status"] for r in store.recent_runs(10))
    finally:
        store.close()
    assert statuses == ["ok", "ok", "stopped"]


def _cli(*args: str, state_url: str, tmp_path: Path, ready: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env.update({"HEALTHSYNC__STATE__URL": state_url, "HEALTHSYNC__SOURCES__SALESFORCE__LOOKBACK_MINUTES": "0",
                "HEALTHSYNC__SOURCES__HUBSPOT__LOOKBACK_MINUTES": "0", "XDG_STATE_HOME": str(tmp_path / "xdg")})
    if ready is not None:
        env["HEALTHSYNC_SANDBOX"] = str(ready)
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


def test_given_a_sqlite_state_when_migrated_to_postgresql_then_a_rerun_on_postgresql_sends_nothing(
    fresh_postgres_url, sandbox, tmp_path
):
    ready = sandbox.write_ready_file(tmp_path / "ready.json")
    sqlite_url = f"sqlite:///{tmp_path / 'state.db'}"
    first = _cli("run", "--json", state_url=sqlite_url, tmp_path=tmp_path, ready=ready)
    assert first.returncode == 0, first.stderr[-3000:]
    first_run = json.loads(first.stdout)
    assert first_run["tasks_created"] > 0 and first_run["alerts_sent"] > 0

    moved = _cli("state", "migrate", "--to", fresh_postgres_url, "--json", state_url=sqlite_url, tmp_path=tmp_path)
    assert moved.returncode == 0, moved.stderr[-3000:]
    copied = json.loads(moved.stdout)
    source = open_store(sqlite_url)
    try:
        with source.engine.connect() as conn:
            expected = {t.name: conn.execute(text(f"select count(*) from {t.name}")).scalar() for t in metadata.sorted_tables}
    finally:
        source.close()
    assert copied["rows"] == expected and copied["rows"]["pushed"] > 0 and copied["rows"]["escalations"] > 0
    assert copied["revision"] == head_revision()

    seq = sandbox.requests()["last_seq"]
    rerun = _cli("run", "--json", state_url=fresh_postgres_url, tmp_path=tmp_path, ready=ready)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert {crm: w["records_changed"] for crm, w in summary["writes"].items()} == {"salesforce": 0, "hubspot": 0}
    assert summary["tasks_created"] == 0 and summary["alerts_sent"] == 0 and summary["escalations"] == 0
    assert _sends(sandbox, seq) == []

    status = _cli("status", "--json", state_url=fresh_postgres_url, tmp_path=tmp_path)
    assert [r["run_id"] for r in json.loads(status.stdout)["runs"]] == [summary["run_id"], first_run["run_id"]]


def test_given_a_target_that_already_holds_a_state_when_migrating_then_it_is_refused_and_left_as_it_was(
    fresh_postgres_url, tmp_path
):
    sqlite_url = f"sqlite:///{tmp_path / 'state.db'}"
    for url, run_id in ((sqlite_url, "run-sqlite"), (fresh_postgres_url, "run-postgres")):
        store = open_store(url)
        store.start_run(run_id, "live", T0)
        store.close()
    refused = _cli("state", "migrate", "--to", fresh_postgres_url, state_url=sqlite_url, tmp_path=tmp_path)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2
    assert "not empty (rows in runs: 1)" in said and "Traceback" not in said
    engine = create_engine(fresh_postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select run_id from runs")).scalars().all() == ["run-postgres"]
    finally:
        engine.dispose()


def test_given_a_run_holding_the_lease_when_migrating_then_it_is_refused_naming_the_holder(fresh_postgres_url, tmp_path):
    sqlite_url = f"sqlite:///{tmp_path / 'state.db'}"
    store = open_store(sqlite_url)
    store.acquire_lock("run_cycle", "20261202T060000Z-abc123", 600)
    store.close()
    refused = _cli("state", "migrate", "--to", fresh_postgres_url, state_url=sqlite_url, tmp_path=tmp_path)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2
    assert "held by 20261202T060000Z-abc123" in said and "Traceback" not in said


def test_given_a_fresh_postgresql_database_when_threads_of_one_process_open_it_at_once_then_each_finds_it_at_head(
    fresh_postgres_url,
):
    """The scheduler runs jobs in threads: their first opens of a new state database must not race Alembic."""
    versions, errors, barrier = [], [], threading.Barrier(6)

    def opener() -> None:
        try:
            barrier.wait(timeout=30)
            store = open_store(fresh_postgres_url)
            versions.append(store.version())
            store.close()
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and versions == [head_revision()] * 6
