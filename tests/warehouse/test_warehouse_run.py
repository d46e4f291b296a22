"""The warehouse stage inside `healthsync run`: exit codes, CRMs unaffected by an unreachable warehouse,
no secret in any output, data-quality KPIs in `--json` and `status`, and the sandbox's demo usage."""

from __future__ import annotations

import json
import socket

import pytest

from warehouse_db import load_warehouse, ago
from healthsync.config.settings import ConfigError, WarehouseSource, load_settings
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.run import run_cycle
from healthsync.sync.state import open_store
from healthsync.sync.status import status

EVENTS = {"table": "usage_events", "user_id": "user_id", "feature": "feature", "value": "value"}


@pytest.fixture
def settings(tmp_path):
    s = load_settings()
    s.state.url = f"sqlite:///{tmp_path}/state.db"
    s.sources.salesforce.lookback_minutes = 0
    s.sources.hubspot.lookback_minutes = 0
    return s


def _scores_written(sb: Sandbox) -> int:
    return sum(1 for a in sb.records("salesforce", "Account") if not a["IsDeleted"] and a.get("Health_Score__c") is not None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once this socket closes


@pytest.mark.parametrize("events, key", [
    ({**EVENTS, "table": "no_such_table"}, "sources.warehouse.events.table"),
    ({**EVENTS, "user_id": "no_such_column"}, "sources.warehouse.events.user_id"),
    ({**EVENTS, "table": None, "query": "select * from usage_events where"}, "sources.warehouse.events.query"),
])
def test_given_a_missing_table_or_column_when_run_then_exit_2_names_the_key_and_nothing_is_written(
        settings, duckdb_url, events, key):
    load_warehouse(duckdb_url, [{"account_key": "p1", "occurred_at": ago(1), "user_id": "u", "feature": "login", "value": 1.0}])
    settings.sources.warehouse = WarehouseSource.model_validate({"url": duckdb_url, "events": events})
    with Sandbox(accounts=8, seed=4, precreate_fields=True, slack_message_interval_s=0) as sb:
        summary = run_cycle(settings, ready=sb.ready, json_mode=True)
        assert summary.exit_code == 2 and summary.status == "failed"
        assert any(key in e for e in summary.errors), summary.errors
        assert _scores_written(sb) == 0


def test_given_a_url_whose_dialect_is_not_installed_when_run_then_exit_2_names_the_url_key(settings):
    settings.sources.warehouse = WarehouseSource.model_validate({"url": "nosuchdb://reader@host/db", "events": EVENTS})
    with Sandbox(accounts=5, seed=4, precreate_fields=True, slack_message_interval_s=0) as sb:
        summary = run_cycle(settings, ready=sb.ready, json_mode=True)
        assert summary.exit_code == 2
        assert any("sources.warehouse.url" in e and "dialect" in e for e in summary.errors), summary.errors
        assert _scores_written(sb) == 0


def test_given_an_unparsable_url_or_a_password_in_the_file_then_the_config_is_refused_without_echoing_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  warehouse:\n    url: 'postgresql+psycopg://reader:hunter2@host:notaport/db'\n"
                   "    events: {table: usage_events}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(bad)
    assert "sources.warehouse.url" in str(err.value) and "hunter2" not in str(err.value)
    bad.write_text("sources:\n  warehouse:\n    url: 'postgresql+psycopg://reader:hunter2@host/db'\n"
                   "    events: {table: usage_events}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(bad)
    assert "HEALTHSYNC__WAREHOUSE__URL" in str(err.value) and "hunter2" not in str(err.value)


def test_given_the_url_secret_in_the_environment_then_it_is_used_and_shown_masked_everywhere(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("sources:\n  warehouse:\n    events: {table: usage_events}\n")
    s = load_settings(good, environ={"HEALTHSYNC__WAREHOUSE__URL": "postgresql+psycopg://reader:hunter2@db.example:5432/analytics"})
    assert s.sources.warehouse.url.endswith(":hunter2@db.example:5432/analytics")
    shown = json.dumps(s.redacted())
    assert "hunter2" not in shown and "reader:***@db.example:5432/analytics" in shown


def test_given_an_unreachable_warehouse_when_run_then_the_crms_are_synced_and_the_run_stops_with_exit_3(settings):
    port = _closed_port()
    settings.sources.warehouse = WarehouseSource.model_validate(
        {"url": f"postgresql+psycopg://reader:hunter2@127.0.0.1:{port}/analytics", "events": EVENTS, "timeout_s": 3}
    )
    with Sandbox(accounts=10, seed=5, precreate_fields=True, slack_message_interval_s=0) as sb:
        summary = run_cycle(settings, ready=sb.ready, json_mode=True)
        body = json.dumps(summary.to_json())
        assert summary.exit_code == 3 and summary.status == "stopped"
        assert "unreachable" in summary.stopped_reason
        # the CRMs' own stages ran as usual: every account scored and written back
        assert _scores_written(sb) == 10
        assert summary.writes["salesforce"]["records_changed"] >= 10 and summary.accounts_scored == 20
        assert "hunter2" not in body and "reader:***@127.0.0.1" in body
        assert summary.data_quality["warehouse"]["unreachable"]
        store = open_store(settings.state.url)
        assert store.recent_runs(1)[0]["exit_code"] == 3
        store.close()


def test_given_the_sandbox_demo_usage_when_run_then_scores_use_it_and_kpis_are_recorded_and_shown(settings):
    with Sandbox(accounts=60, seed=6, precreate_fields=True, slack_message_interval_s=0, warehouse=True) as sb:
        assert sb.ready["warehouse"]["url"].startswith("duckdb:///")
        summary = run_cycle(settings, ready=sb.ready, json_mode=True)
        assert summary.exit_code in (0, 1), summary.errors
        dq = summary.to_json()["data_quality"]
        wh = dq["warehouse"]
        # one account in 50 has no product id in its CRM record: 118 of 120 keys match
        assert wh["keys"] == 120 and wh["key_match_rate"] == pytest.approx(118 / 120, abs=1e-4)
        assert wh["accounts_without_usage"] == 2
        assert wh["completeness"]["active_users_30d"] == pytest.approx(118 / 120, abs=1e-4)
        assert wh["freshness_hours"] < 1 and wh["error_rate"] == 0
        assert set(dq) == {"salesforce", "hubspot", "warehouse"}
        for crm in ("salesforce", "hubspot"):
            assert set(dq[crm]) >= {"completeness", "freshness_hours", "duplicate_ids", "error_rate"}
            assert dq[crm]["duplicate_ids"] == {"accounts": 0, "opportunities": 0, "tickets": 0}
        store = open_store(settings.state.url)
        shown = status(store)["data_quality"]
        assert shown["run_id"] == summary.run_id
        assert shown["sources"]["warehouse"]["key_match_rate"] == pytest.approx(118 / 120, abs=1e-4)
        # below the 95% key-match floor? no; the KPIs under threshold are listed by name
        assert all(isinstance(line, str) for line in shown["breached"])
        store.close()



def test_given_a_run_with_the_warehouse_when_the_report_is_written_then_it_shows_the_data_quality_kpis(settings, tmp_path):
    settings.report.enabled = True
    settings.report.path = str(tmp_path / "report.html")
    with Sandbox(accounts=60, seed=6, precreate_fields=True, slack_message_interval_s=0, warehouse=True) as sb:
        summary = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert summary.report_path == settings.report.path
    html = (tmp_path / "report.html").read_text()
    section = html[html.index('id="data-quality"'):]
    section = section[: section.index("</table>")]
    assert 'data-source="warehouse"' in section and 'data-source="salesforce"' in section
    assert "98.3%" in section  # the warehouse's key match rate (118 of 120 keys)
