"""The report of a generated portfolio (450 accounts in both CRMs, 40 daily runs) in headless Chromium.

More accounts than the old 200-account drill-down cap: every account is in the table, sortable and
searchable; the trends are daily with band changes marked, per account and for the portfolio.
"""

from __future__ import annotations

import math

import pytest

from report_browser import kpi, open_page, shot
from healthsync.sync.report.data import load_report_data
from report_store import GENERATED_ACCOUNTS, GENERATED_DAYS, NOW, latest_accounts

EVIL = '<img src=x onerror="document.body.dataset.owned=1">Evil & <b>Co</b>'


@pytest.fixture(scope="module")
def opened(generated_report, browser):
    _store, info = generated_report
    page = open_page(browser, info.path)
    yield page
    page.close()


def test_given_450_accounts_then_the_table_holds_every_one_in_pages(opened):
    page = opened.page
    page.click("nav.tabs [data-view=accounts]")
    assert page.get_attribute("#account-count", "data-value") == str(GENERATED_ACCOUNTS)
    assert page.get_attribute("#account-pager", "data-pages") == str(math.ceil(GENERATED_ACCOUNTS / 50))
    page.click("#account-pager button:has-text('Next')")
    first = page.evaluate("() => document.querySelector('#account-table tbody tr td').textContent")
    assert first == "51"


def test_given_an_account_beyond_the_200th_when_searched_then_it_is_found(opened, generated_report, report_settings):
    store, _info = generated_report
    page = opened.page
    data = load_report_data(store, report_settings, now=NOW)
    target = data.accounts.iloc[321]  # in priority order, far beyond the old cap of 200
    page.click("nav.tabs [data-view=accounts]")
    page.fill("#account-search", target["name"])
    page.wait_for_function(f"() => document.getElementById('account-count').dataset.value === '1' || "
                           f"[...document.querySelectorAll('#account-table tr[data-account-id]')].some(r => r.dataset.accountId === '{target['account_id']}')")
    ids = page.evaluate("() => [...document.querySelectorAll('#account-table tr[data-account-id]')].map(r => r.dataset.accountId)")
    assert target["account_id"] in ids
    expected = int((data.accounts["name"].str.lower().str.contains(target["name"].lower(), regex=False)).sum())
    assert page.get_attribute("#account-count", "data-value") == str(expected)
    shot(page, "report-accounts-search.png")
    page.fill("#account-search", "")


def test_given_the_arr_column_when_clicked_then_the_biggest_account_comes_first(opened, generated_report):
    store, _info = generated_report
    page = opened.page
    page.click("nav.tabs [data-view=accounts]")
    page.fill("#account-search", "")
    page.wait_for_function(f"() => document.getElementById('account-count').dataset.value === '{GENERATED_ACCOUNTS}'")
    page.click("#account-table th[data-sort=arr]")
    top = page.evaluate("() => document.querySelector('#account-table tr[data-account-id]').dataset.accountId")
    frame = latest_accounts(store)
    assert top == frame.sort_values(["arr", "account_id"], ascending=[False, True]).iloc[0]["account_id"]
    page.click("#account-table th[data-sort=priority]")


def test_given_daily_runs_then_the_portfolio_trend_is_drawn_daily(opened):
    page = opened.page
    page.click("nav.tabs [data-view=executive]")
    assert page.locator("#view-executive .trend-empty").is_hidden()
    caption = page.text_content("#view-executive .trend-caption")
    assert f"over {GENERATED_DAYS} scored days" in caption
    marks = page.evaluate("() => document.querySelectorAll('#view-executive [data-chart=\"trend\"] svg path').length")
    assert marks > 3


def test_given_an_account_with_band_changes_then_its_trend_marks_them(opened, generated_report):
    store, _info = generated_report
    page = opened.page
    sh = store.tables["score_history"]
    with store.engine.connect() as conn:
        rows = conn.execute(sh.select().with_only_columns(sh.c.account_id, sh.c.scored_at, sh.c.band)).all()
    bands: dict[str, list] = {}
    for aid, at, band in sorted(rows, key=lambda r: (r[0], r[1])):
        bands.setdefault(aid, []).append(band)
    changes = {aid: sum(1 for a, b in zip(seq, seq[1:]) if a != b) for aid, seq in bands.items()}
    aid = max(changes, key=lambda a: (changes[a], a))
    assert changes[aid] >= 2
    page.evaluate("id => { location.hash = 'account=' + encodeURIComponent(id); }", aid)
    page.wait_for_function(f"() => document.getElementById('account-detail').dataset.accountId === '{aid}'")
    chart = page.locator("#detail-chart")
    assert chart.get_attribute("data-points") == str(GENERATED_DAYS)
    assert chart.get_attribute("data-band-changes") == str(changes[aid])
    page.wait_for_function("() => document.querySelectorAll('#detail-chart svg path').length > 3")
    shot(page, "report-account-detail.png")
    page.evaluate("() => { location.hash = ''; }")


def test_given_crm_text_with_markup_then_it_shows_as_text(browser, tmp_path, report_settings):
    from healthsync.sync.report import write_report
    from report_store import build_store

    store = build_store(f"sqlite:///{tmp_path}/s.db", n_accounts=30, days=2, names={i: EVIL for i in range(0, 30, 3)}, usage=False)
    info = write_report(store, report_settings, tmp_path / "r.html", now=NOW)
    assert "<b>Co</b>" not in info.path.read_text()  # the data travels encoded, never as markup
    opened_ = open_page(browser, info.path)
    page = opened_.page
    page.click("nav.tabs [data-view=accounts]")
    names = page.evaluate("() => [...document.querySelectorAll('#account-table a.account-link')].map(a => a.textContent)")
    assert EVIL in names
    assert page.evaluate("() => document.body.dataset.owned") is None
    assert page.evaluate("() => document.querySelectorAll('#account-table b, #account-table img').length") == 0
    assert opened_.errors == []
    opened_.close()


def test_given_an_empty_store_then_the_report_says_to_run_first(browser, tmp_path, report_settings):
    from healthsync.sync.report import write_report
    from healthsync.sync.state import open_store

    info = write_report(open_store(f"sqlite:///{tmp_path}/empty.db"), report_settings, tmp_path / "sub" / "r.html", now=NOW)
    assert info.accounts == 0 and "No scored run in the state store yet" in info.path.read_text()
    opened_ = open_page(browser, info.path)
    assert kpi(opened_.page, "accounts") == "0" and opened_.errors == []
    opened_.close()


def test_given_no_state_store_then_a_clear_error_names_the_key_without_the_password(tmp_path, report_settings):
    from healthsync.connectors.base import ConfigurationError
    from healthsync.sync.report import redact_url, write_report
    from healthsync.sync.state import StateStore

    with pytest.raises(ConfigurationError, match=r"state.url: no healthsync state .*healthsync run"):
        write_report(StateStore(f"sqlite:///{tmp_path}/nothing.db"), report_settings, tmp_path / "r.html", now=NOW)
    assert not (tmp_path / "r.html").exists()
    assert "s3cret" not in redact_url("postgresql://u:s3cret@db.example.com/hs")
