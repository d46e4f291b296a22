"""A real sandbox run with the report switched on, shared by the browser and command-line tests."""

from __future__ import annotations

import pytest

from healthsync.config.settings import load_settings
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.run import run_cycle
from healthsync.sync.state import open_store


@pytest.fixture(scope="session")
def sandbox_report(tmp_path_factory):
    """One `run_cycle` against the sandbox (60 accounts per CRM, seed 5); yields (summary json, report path, store, settings)."""
    tmp = tmp_path_factory.mktemp("report-run")
    report_path = tmp / "out" / "report.html"
    environ = {
        "HEALTHSYNC__STATE__URL": f"sqlite:///{tmp}/state.db",
        "HEALTHSYNC__REPORT__ENABLED": "true",
        "HEALTHSYNC__REPORT__PATH": str(report_path),
    }
    settings = load_settings(environ=environ)
    with Sandbox(accounts=60, seed=5, slack_message_interval_s=0) as sb:
        summary = run_cycle(settings, ready=sb.ready, json_mode=True).to_json()
    store = open_store(settings.state.url)
    yield summary, report_path, store, settings
    store.close()
