"""The report written by a real sandbox run, opened in headless Chromium.

The main job (`run_cycle` with `report.enabled`, conftest.py) writes the report; Chromium
loads it from disk (file://, no server) and we read back the DOM it built:
the figures shown must equal the state store's (bands, ARR at risk, top-10),
every chart must be an inline SVG with something drawn, the page's script must
run to its end without any console message, and following an account link must
switch to the drill-down tab. A screenshot lands in test-artifacts/.

Skipped only when /usr/bin/chromium is absent (`make test` installs it via the
Makefile `browser` target).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dom import by_id, chart_is_drawn, charts, parse, rows
from report_store import expected_figures
from healthsync.sync.report import anchor

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# As root in a container: no sandbox, no GPU, and none of Chromium's own network traffic
# (this machine's network is closed; see the python machine notes, "Known to work").
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]?\s*(.*)")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) is not installed; `make browser` installs it")


def chromium(url: str, profile: Path, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run headless Chromium once on `url` with a fresh profile; console messages go to stderr."""
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def console_messages(stderr: str) -> list[str]:
    return [m.group(1) for m in CONSOLE.finditer(stderr)]


@pytest.fixture(scope="module")
def dumped(sandbox_report, tmp_path_factory):
    """The DOM after Chromium ran the page, and Chromium's stderr."""
    _summary, report_path, _store, _settings = sandbox_report
    result = chromium(report_path.as_uri(), tmp_path_factory.mktemp("chromium-profile"), "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    return parse(result.stdout), result.stderr


def test_given_a_sandbox_run_when_report_enabled_then_the_main_job_writes_it(sandbox_report):
    summary, report_path, _store, _settings = sandbox_report
    assert summary["status"] == "ok" and not summary["errors"], summary["errors"]
    assert summary["report_path"] == str(report_path)
    assert report_path.stat().st_size > 10_000


def test_given_the_report_in_chromium_then_the_script_ran_without_console_messages(dumped):
    elements, stderr = dumped
    body = next(e for e in elements if e.tag == "body")
    assert body.get("data-ready") == "1", "the page's script did not run to its end"
    assert "js" in body.classes
    assert console_messages(stderr) == []


def test_given_the_report_in_chromium_then_every_chart_is_an_inline_svg_with_marks(dumped):
    elements, _ = dumped
    figures = charts(elements)
    names = {f.get("data-chart") for f in figures}
    assert {"bands", "distribution", "trend", "forecast"} <= names
    drilled = [e for e in elements if e.tag == "details" and "account" in e.classes]
    assert drilled and len([n for n in names if n.startswith("history-")]) == len(drilled)
    empty = [f.get("data-chart") for f in figures if not chart_is_drawn(f)]
    assert empty == []


def test_given_the_report_in_chromium_then_figures_equal_the_state_store(dumped, sandbox_report):
    elements, _ = dumped
    summary, _path, store, settings = sandbox_report
    at_risk = tuple(b.name for b in settings.model.bands if b.at_risk)
    counts, arr_at_risk, top = expected_figures(store, at_risk)
    shown = {r.get("data-band"): int(r.get("data-accounts")) for r in rows(elements, "band-table", "data-band")}
    assert {k: v for k, v in shown.items() if v} == counts == summary["bands"]
    assert int(by_id(elements, "kpi-accounts").get("data-value")) == summary["accounts_scored"]
    assert float(by_id(elements, "kpi-arr-at-risk").get("data-value")) == pytest.approx(arr_at_risk, abs=0.01)
    at_risk_rows = [r for r in rows(elements, "band-table", "data-band") if r.get("data-at-risk") == "true"]
    assert sum(float(r.get("data-arr")) for r in at_risk_rows) == pytest.approx(arr_at_risk, abs=0.01)
    assert top, "the sandbox portfolio should have at-risk accounts"
    assert [r.get("data-account-id") for r in rows(elements, "top-at-risk", "data-account-id")] == top


def test_given_an_account_link_when_opened_then_the_drill_down_tab_shows_it(sandbox_report, dumped, tmp_path):
    elements, _ = dumped
    _summary, report_path, _store, _settings = sandbox_report
    first = rows(elements, "top-at-risk", "data-account-id")[0].get("data-account-id")
    target = anchor("acct-", first)
    result = chromium(report_path.as_uri() + "#" + target, tmp_path / "profile", "--dump-dom")
    after = parse(result.stdout)
    assert "active" in by_id(after, "accounts").classes and "active" not in by_id(after, "executive").classes
    assert "open" in by_id(after, target).attrs
    assert console_messages(result.stderr) == []


def test_given_the_report_when_screenshotted_then_an_artifact_is_written(sandbox_report, tmp_path):
    _summary, report_path, _store, _settings = sandbox_report
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    result = chromium(report_path.as_uri(), tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,3000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # a blank 1400x3000 PNG is a few KB
    shutil.copy(report_path, ARTIFACTS / "report.html")


def test_given_a_page_that_throws_then_the_console_check_catches_it(tmp_path):
    """The console check above must be able to fail."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><p>x</p><script>throw new Error('boom')</script>")
    result = chromium(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert any("Uncaught Error: boom" in m for m in console_messages(result.stderr))
