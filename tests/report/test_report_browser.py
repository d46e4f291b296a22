"""The report written by a real sandbox run (both CRMs), opened in headless Chromium through Playwright.

The main job (`run_cycle` with `report.enabled`, conftest.py) writes the report; Chromium loads it
from disk and we read what the page's script built: the figures equal the state store's, with and
without filters; every CRM link has the CRM's record-URL shape with the instance the CRM reported;
owners show by name with the e-mail on hover; charts show values on hover; the forecast legend
covers no bar; with a single run the trend says so; nothing is fetched and the console stays clean.
Screenshots of each view land in test-artifacts/.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from report_browser import HS_URL, SF_URL, apply_filter, band_rows, kpi, open_page, shot
from healthsync.sync.report.payload import decode
from report_store import expected_figures, latest_accounts

VIEWS = ("executive", "segments", "trends", "renewals", "accounts", "book", "quality")


@pytest.fixture(scope="module")
def opened(sandbox_report, browser):
    _summary, report_path, _store, _settings = sandbox_report
    page = open_page(browser, report_path)
    yield page
    page.close()


def payload_of(path) -> dict:
    """The data the page received (payload.py), read back from the file."""
    match = re.search(r'<script type="application/octet-stream" id="report-data">([^<]+)</script>', path.read_text())
    return decode(match.group(1))


def _reset(page) -> None:
    page.click("#f-reset")


def test_given_a_sandbox_run_when_report_enabled_then_the_main_job_writes_it(sandbox_report):
    summary, report_path, _store, _settings = sandbox_report
    assert summary["status"] == "ok" and not summary["errors"], summary["errors"]
    assert summary["report_path"] == str(report_path)
    html = report_path.read_text()
    assert "<script" in html and "vegaEmbed" in html  # the charting library is inside the file
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", html, flags=re.S)
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=", markup)  # nothing outside the scripts to fetch


def test_given_the_report_in_chromium_then_it_draws_without_console_errors_or_network(opened):
    assert opened.errors == []
    assert [m for m in opened.console if m[0] == "warning"] == []
    assert [u for u in opened.requests if not u.startswith("file://")] == []
    # every chart of the visible view is drawn as SVG with marks
    drawn = opened.page.evaluate("""() => [...document.querySelectorAll('#view-executive [data-chart]')]
        .filter(c => !c.hidden).map(c => [c.dataset.chart, c.querySelectorAll('svg path, svg rect').length])""")
    assert drawn and all(n > 3 for _, n in drawn), drawn


def test_given_the_report_in_chromium_then_figures_equal_the_state_store(opened, sandbox_report):
    summary, _path, store, settings = sandbox_report
    page = opened.page
    at_risk = tuple(b.name for b in settings.model.bands if b.at_risk)
    counts, arr_at_risk, top = expected_figures(store, at_risk)
    assert band_rows(page) == counts == summary["bands"]
    assert int(kpi(page, "accounts")) == summary["accounts_scored"] == sum(counts.values())
    assert float(kpi(page, "arr-at-risk")) == pytest.approx(arr_at_risk, abs=0.01)
    assert top, "the sandbox portfolio should have at-risk accounts"
    assert page.evaluate("() => [...document.querySelectorAll('#top-at-risk tr[data-account-id]')].map(r => r.dataset.accountId)") == top


@pytest.mark.parametrize("select_id, column, pick", [
    ("f-segment", "segment", "enterprise"),
    ("f-crm", "crm", "hubspot"),
    ("f-band", "band", "Red"),
])
def test_given_a_filter_when_applied_then_every_count_equals_the_stores_for_it(opened, sandbox_report, select_id, column, pick):
    _summary, _path, store, settings = sandbox_report
    page = opened.page
    _reset(page)
    at_risk = tuple(b.name for b in settings.model.bands if b.at_risk)
    all_counts, _, _ = expected_figures(store, at_risk)
    counts, arr_at_risk, top = expected_figures(store, at_risk, **{column: pick})
    assert 0 < sum(counts.values()) < sum(all_counts.values())
    label = {"enterprise": "Enterprise", "hubspot": "HubSpot"}.get(pick, pick)
    apply_filter(page, select_id, label)
    assert int(kpi(page, "accounts")) == sum(counts.values())
    assert band_rows(page) == counts
    assert float(kpi(page, "arr-at-risk")) == pytest.approx(arr_at_risk, abs=0.01)
    assert page.get_attribute("#account-count", "data-value") == str(sum(counts.values()))
    assert page.evaluate("() => [...document.querySelectorAll('#top-at-risk tr[data-account-id]')].map(r => r.dataset.accountId)") == top
    segments = page.evaluate("() => [...document.querySelectorAll('#segment-table tr[data-segment]')].map(r => +r.dataset.accounts)")
    assert sum(segments) == sum(counts.values())
    _reset(page)
    assert int(kpi(page, "accounts")) == sum(all_counts.values())


def test_given_the_owner_filter_when_applied_then_the_book_is_that_owners(opened, sandbox_report):
    _summary, _path, store, _settings = sandbox_report
    page = opened.page
    _reset(page)
    frame = latest_accounts(store)
    email = sorted(frame["owner_email"].dropna().unique())[0]
    names = {o["email"]: o["name"] for crm in ("salesforce", "hubspot") for o in store.load_replica(crm, "owners")}
    apply_filter(page, "f-owner", names[email])
    assert int(kpi(page, "accounts")) == int((frame["owner_email"] == email).sum())
    owners = page.evaluate("() => [...document.querySelectorAll('#owner-table tr[data-owner]')].map(r => r.dataset.owner)")
    assert owners == [email]
    _reset(page)


def test_given_the_renewal_window_filter_then_only_renewals_in_it_count(opened, sandbox_report):
    _summary, report_path, store, _settings = sandbox_report
    page = opened.page
    _reset(page)
    today = pd.Timestamp(payload_of(report_path)["meta"]["now_day"], unit="D")  # the run's clock, as the page uses it
    frame = latest_accounts(store)
    renewal = pd.to_datetime(frame["renewal_date"], errors="coerce")
    expected = int(((renewal >= today) & (renewal <= today + pd.Timedelta(days=90))).sum())
    assert 0 < expected < len(frame)
    apply_filter(page, "f-renewal", "Renewing within 90 days")
    assert int(kpi(page, "accounts")) == expected
    quarters = page.evaluate("() => [...document.querySelectorAll('#renewal-forecast tr[data-quarter]')].map(r => +r.dataset.accounts)")
    assert sum(quarters) == expected
    _reset(page)


def test_given_crm_links_then_each_has_its_crms_record_url_with_the_reported_instance(opened, sandbox_report):
    _summary, _path, store, _settings = sandbox_report
    page = opened.page
    _reset(page)
    instances = store.crm_instance_info()
    assert set(instances) == {"salesforce", "hubspot"} and instances["hubspot"]["portal_id"] == 24681357
    sf_host = instances["salesforce"]["instance_url"]
    page.click("nav.tabs [data-view=book]")
    links = page.evaluate("""() => [...document.querySelectorAll('a[data-kind]')].map(a => ({
        href: a.href, crm: a.dataset.crm, kind: a.dataset.kind, id: a.dataset.recordId, text: a.textContent}))""")
    first = page.evaluate("() => document.querySelector('#account-table tr[data-account-id]').dataset.accountId")
    page.evaluate("id => { location.hash = 'account=' + encodeURIComponent(id); }", first)
    page.wait_for_selector("#account-detail:not([hidden]) table.opps")
    links += page.evaluate("""() => [...document.querySelectorAll('#account-detail a[data-kind]')].map(a => ({
        href: a.href, crm: a.dataset.crm, kind: a.dataset.kind, id: a.dataset.recordId, text: a.textContent}))""")
    kinds = {(link["crm"], link["kind"]) for link in links}
    assert {("salesforce", "account"), ("hubspot", "account"), ("salesforce", "task"), ("hubspot", "task")} <= kinds
    assert any(k == "opportunity" for _, k in kinds)
    objects = {"account": ("Account", "0-2"), "opportunity": ("Opportunity", "0-3"), "task": ("Task", "0-27")}
    for link in links:
        if link["crm"] == "salesforce":
            m = SF_URL.match(link["href"])
            assert m and link["href"].startswith(sf_host + "/lightning/r/"), link
            assert m.group(1) == objects[link["kind"]][0] and link["id"] in link["href"]
        else:
            m = HS_URL.match(link["href"])
            assert m and m.group(1) == "24681357" and m.group(2) == objects[link["kind"]][1] and m.group(3) == link["id"], link
    # tasks show by subject, never by raw id
    tasks = [link for link in links if link["kind"] == "task"]
    assert tasks and all(link["text"] != link["id"] and ":" in link["text"] for link in tasks)
    page.evaluate("() => { location.hash = ''; }")


def test_given_owners_then_they_show_by_name_with_the_email_on_hover(opened, sandbox_report):
    _summary, _path, store, _settings = sandbox_report
    names = {o["email"]: o["name"] for crm in ("salesforce", "hubspot") for o in store.load_replica(crm, "owners")}
    shown = opened.page.evaluate("""() => [...document.querySelectorAll('#top-at-risk .owner')].map(s => [s.textContent, s.title])""")
    assert shown and all(names[email] == name for name, email in shown)


def test_given_a_chart_when_hovered_then_its_values_show(opened):
    page = opened.page
    _reset(page)
    page.click("nav.tabs [data-view=executive]")
    bar = page.locator('[data-chart="bands"] svg path[aria-roledescription="bar"]').first
    bar.hover()
    page.wait_for_selector("#vg-tooltip-element.visible", timeout=5000)
    text = page.text_content("#vg-tooltip-element")
    assert "Accounts" in text and "ARR" in text and any(ch.isdigit() for ch in text)


def test_given_the_forecast_chart_then_its_legend_covers_no_bar(opened):
    """The legend sits outside the plot area (bars and grid), whatever heights the bars have."""
    page = opened.page
    page.click("nav.tabs [data-view=renewals]")
    for chart in ("renewals", "pipeline"):
        boxes = page.evaluate("""name => {
            const svg = document.querySelector(`[data-chart="${name}"] svg`);
            const r = e => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
            return {legend: [...svg.querySelectorAll('.role-legend')].map(r),
                    plot: [...svg.querySelectorAll('path[aria-roledescription="bar"], .role-axis-grid')].map(r)};
        }""", chart)
        assert boxes["legend"] and len(boxes["plot"]) > 1, (chart, boxes)
        x0 = min(b[0] for b in boxes["plot"])
        y0 = min(b[1] for b in boxes["plot"])
        x1 = max(b[2] for b in boxes["plot"])
        y1 = max(b[3] for b in boxes["plot"])
        for lx0, ly0, lx1, ly1 in boxes["legend"]:
            assert lx1 <= x0 or x1 <= lx0 or ly1 <= y0 or y1 <= ly0, (chart, "the legend is drawn over the plot")
    page.click("nav.tabs [data-view=executive]")


def test_given_a_single_run_then_the_trend_says_so_instead_of_a_line(opened):
    page = opened.page
    note = page.locator("#view-executive .trend-empty")
    assert note.is_visible() and "Only one day of scores so far" in note.text_content()
    assert page.locator('#view-executive [data-chart="trend"]').is_hidden()
    assert page.evaluate("() => document.querySelectorAll('[data-chart=\"trend\"] svg').length") == 0


def test_given_the_report_when_each_view_is_opened_then_a_screenshot_is_kept(opened, sandbox_report):
    page = opened.page
    _reset(page)
    for view in VIEWS:
        page.click(f"nav.tabs [data-view={view}]")
        assert page.locator(f"#view-{view}").is_visible()
        assert shot(page, f"report-{view}.png").stat().st_size > 20_000
    page.click("nav.tabs [data-view=executive]")
    assert opened.errors == []


def test_given_a_page_that_throws_then_the_console_check_catches_it(browser, tmp_path):
    """The console check above must be able to fail."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><body data-ready='1'><p>x</p><script>throw new Error('boom')</script></body>")
    page = open_page(browser, bad, wait_ready=False)
    page.page.wait_for_timeout(200)
    assert any("boom" in e for e in page.errors)
    page.close()


def test_given_the_run_then_owners_and_instances_are_stored_from_the_crm_apis(sandbox_report):
    _summary, _path, store, _settings = sandbox_report
    owners = {crm: store.load_replica(crm, "owners") for crm in ("salesforce", "hubspot")}
    assert all(owners.values())
    assert all(o.get("name") and o.get("email") for rows in owners.values() for o in rows if o.get("email") != "integration@healthsync.sandbox")
    info = store.crm_instance_info()
    assert info["salesforce"]["instance_url"].startswith("https://127.0.0.1:")
    assert info["hubspot"] == {"portal_id": 24681357, "ui_domain": "app.hubspot.com"}
    assert json.dumps(info)  # plain JSON: the report embeds it
