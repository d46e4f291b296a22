"""Shared by the report tests: one real sandbox run with the report switched on, one generated store, one browser.

The browser is the system Chromium (`/usr/bin/chromium`, installed by `make test` through the
Makefile's `browser` target) driven by Playwright; Playwright never downloads a browser of its
own here. Browser tests are skipped, with the reason, where either is missing.
"""

from __future__ import annotations

import pytest

from healthsync.config.settings import load_settings
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.run import run_cycle
from healthsync.sync.state import open_store
from report_browser import CHROMIUM, FLAGS
from report_store import GENERATED_ACCOUNTS, GENERATED_DAYS, NOW, build_store


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


@pytest.fixture(scope="session")
def report_settings():
    return load_settings(environ={})


@pytest.fixture(scope="session")
def generated_report(tmp_path_factory, report_settings):
    """A generated portfolio in both CRMs with daily history, and its report; yields (store, info)."""
    from healthsync.sync.report import write_report

    tmp = tmp_path_factory.mktemp("generated")
    store = build_store(f"sqlite:///{tmp}/state.db", n_accounts=GENERATED_ACCOUNTS, days=GENERATED_DAYS)
    info = write_report(store, report_settings, tmp / "report.html", now=NOW)
    yield store, info
    store.close()


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for every browser test of the session."""
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium (/usr/bin/chromium) is not installed; `make browser` installs it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (`make install` installs the dev extra)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield chromium
        chromium.close()


