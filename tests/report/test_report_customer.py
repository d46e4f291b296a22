"""The customer-facing QBR page (`healthsync report --account ID --customer`), read in Chromium and printed to PDF.

It must hold the customer's own figures (adoption, usage over time, seats, support) and none of
the internal ones: no score, no band, no drivers, no CSM sentiment, no risk or churn language
(seed 001_9b7515619717186a.txt, "Customer-Facing Health Reports": "What to Exclude").
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from report_browser import open_page, shot
from healthsync.sync.cli import app
from healthsync.sync.report import write_customer_report
from report_store import NOW, latest_accounts

FORBIDDEN_WORDS = ("score", "health", "risk", "churn", "driver", "sentiment", "band", "grade", "red", "yellow", "green",
                   "insufficient", "override")


def internal_text(store, account_id: str) -> list[str]:
    """What the page must not contain for `account_id`: its current score, its drivers (whole and each one)."""
    sh = store.tables["score_history"]
    with store.engine.connect() as conn:
        row = conn.execute(sh.select().where(sh.c.account_id == account_id).order_by(sh.c.scored_at.desc()).limit(1)).mappings().first()
    drivers = str(row["drivers"])
    return [f"{row['score']:.1f}", drivers] + [d.strip() for d in drivers.split(";") if d.strip()]


def shown_text(page) -> str:
    """What a reader sees: the page's text and the charts' labels."""
    return page.evaluate("() => document.body.innerText + ' ' + [...document.querySelectorAll('svg text')].map(t => t.textContent).join(' ')")


def visible_and_source(page) -> str:
    """The page's markup without chart geometry (SVG path numbers are not figures), plus every text the charts show."""
    markup = re.sub(r"<svg\b.*?</svg>", "", page.content(), flags=re.S)
    chart_text = page.evaluate("() => [...document.querySelectorAll('svg text, svg title, svg [aria-label]')]"
                               ".map(t => t.textContent + ' ' + (t.getAttribute('aria-label') || '')).join(' ')")
    return markup + "\n" + page.evaluate("() => document.body.innerText") + "\n" + chart_text


def _pick(store, *, busy: bool) -> dict:
    """An account with (busy) or without tickets in the last 90 days."""
    frame = latest_accounts(store)
    tickets = pd.DataFrame([t for crm in ("salesforce", "hubspot") for t in store.load_replica(crm, "tickets")])
    recent = tickets[pd.to_datetime(tickets["created_at"]) >= pd.Timestamp(NOW.replace(tzinfo=None)) - pd.Timedelta(days=90)]
    counts = recent["account_id"].value_counts()
    ids = [a for a in frame["account_id"] if (counts.get(a, 0) > 1) == busy]
    return frame[frame["account_id"] == sorted(ids)[0]].iloc[0].to_dict()


@pytest.fixture(scope="module")
def qbr(generated_report, report_settings, browser, tmp_path_factory):
    store, _info = generated_report
    account = _pick(store, busy=True)
    out = tmp_path_factory.mktemp("qbr") / "qbr.html"
    info = write_customer_report(store, report_settings, out, account["account_id"], now=NOW)
    opened = open_page(browser, info.path, wait_ready=False, width=1000)
    yield store, account, info, opened
    opened.close()


def test_given_the_qbr_page_then_it_holds_none_of_the_internal_fields(qbr):
    store, account, info, opened = qbr
    text = visible_and_source(opened.page)
    lowered = text.lower()
    for word in FORBIDDEN_WORDS:
        assert not re.search(rf"\b{word}", lowered), f"internal word {word!r} on the customer page"
    shown = shown_text(opened.page)
    for internal in internal_text(store, account["account_id"]):
        assert not re.search(rf"(?<![\d.]){re.escape(internal)}(?![\d])", shown), f"internal value {internal!r} on the customer page"
        assert internal not in text or re.fullmatch(r"[\d.]+", internal), internal
    assert "<script" not in info.path.read_text()  # nothing runs: a page to e-mail or print
    assert opened.errors == [] and [u for u in opened.requests if not u.startswith("file://")] == []


def test_given_the_qbr_page_then_adoption_and_seats_are_the_customers_own_figures(qbr):
    store, account, _info, opened = qbr
    page = opened.page
    record = next(a for crm in ("salesforce", "hubspot") for a in store.load_replica(crm, "accounts") if a["account_id"] == account["account_id"])
    assert page.text_content("#qbr-account") == record["name"]
    tile = page.text_content("[data-figure=active-users]")
    assert f"{record['active_users_30d']:,}" in tile and f"of {record['seats_purchased']:,} seats" in tile
    assert f"of {record['features_available']:,} available" in page.text_content("[data-figure=features]")
    names = {o["email"]: o["name"] for crm in ("salesforce", "hubspot") for o in store.load_replica(crm, "owners")}
    assert page.text_content("#qbr-csm") == names[record["owner_email"]]


def test_given_daily_usage_then_the_usage_trend_is_charted_with_its_growth(qbr):
    _store, _account, _info, opened = qbr
    page = opened.page
    assert page.locator("#qbr-trend-note").count() == 0
    assert page.evaluate("() => document.querySelectorAll('figure[data-chart=users] svg path').length") > 0
    assert page.evaluate("() => document.querySelectorAll('figure[data-chart=logins] svg path').length") > 0
    assert re.search(r"Active users grew \d+% since", page.text_content("#qbr-highlights"))


def test_given_support_requests_then_the_summary_counts_the_last_90_days(qbr):
    store, account, _info, opened = qbr
    tickets = pd.DataFrame([t for crm in ("salesforce", "hubspot") for t in store.load_replica(crm, "tickets")
                            if t["account_id"] == account["account_id"]])
    start = pd.Timestamp(NOW.replace(tzinfo=None)) - pd.Timedelta(days=90)
    opened_n = int((pd.to_datetime(tickets["created_at"]) >= start).sum())
    resolved_n = int((pd.to_datetime(tickets["closed_at"]) >= start).sum())
    rows = opened.page.evaluate("() => [...document.querySelectorAll('#qbr-support tr')].map(r => [...r.cells].map(c => c.textContent))")
    table = {k: v for k, v in rows}
    assert table["Requests opened (last 90 days)"] == str(opened_n) and table["Requests resolved (last 90 days)"] == str(resolved_n)
    assert opened_n > 1


def test_given_the_qbr_page_when_printed_then_it_is_one_clean_pdf_page(qbr, tmp_path):
    _store, _account, _info, opened = qbr
    page = opened.page
    shot(page, "report-customer-qbr.png")
    pdf = page.pdf(format="A4", print_background=True)
    (tmp_path / "qbr.pdf").write_bytes(pdf)
    assert len(re.findall(rb"/Type\s*/Page[^s]", pdf)) == 1


def test_given_a_first_run_then_the_qbr_page_says_trends_start_next_time(sandbox_report, browser, tmp_path):
    _summary, _path, store, settings = sandbox_report
    aid = latest_accounts(store).sort_values("account_id").iloc[0]["account_id"]
    out = tmp_path / "first.html"
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--account", aid, "--customer", "--json"],
                                env={"HEALTHSYNC__STATE__URL": settings.state.url})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["accounts"] == 1
    opened = open_page(browser, out, wait_ready=False, width=1000)
    page = opened.page
    assert "next review" in page.text_content("#qbr-trend-note")
    lowered = visible_and_source(page).lower()
    assert not [w for w in FORBIDDEN_WORDS if re.search(rf"\b{w}", lowered)]
    for internal in internal_text(store, aid):
        assert not re.search(rf"(?<![\d.]){re.escape(internal)}(?![\d])", shown_text(page)), internal
    opened.close()
