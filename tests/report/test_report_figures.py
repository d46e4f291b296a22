"""Every figure of the report against a hand calculation: four accounts, two daily runs, read in Chromium.

Each number asserted below is worked out in the comments from the rows `hand_store` writes; the
page computes them in the browser from the data it carries, with and without filters.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import insert

from report_browser import apply_filter, band_rows, kpi, open_page
from healthsync.sync.report import write_report
from healthsync.sync.report.data import load_report_data
from healthsync.sync.state import dumps, open_store, utc_naive
from report_store import NOW

OVERRIDDEN = {"override": True, "override_reason": "CSM sentiment red: one tier down", "raw_band": "Yellow"}


def _account(aid, name, arr, owner, renewal_days, since_days, segment="mid_market"):
    return {"account_id": aid, "name": name, "segment": segment, "arr": arr, "owner_email": owner,
            "renewal_date": utc_naive(NOW + timedelta(days=renewal_days)).date().isoformat(), "csm_sentiment": "red",
            "customer_since": utc_naive(NOW - timedelta(days=since_days)).date().isoformat() if since_days else None}


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory):
    """Four Salesforce accounts, two runs a day apart; see each test for the arithmetic."""
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('hand')}/state.db")
    accounts = [
        _account("sf:001A00000000001AAA", "Alpha", 100.0, "ann@example.com", 100, 30),   # 2027-02-28: 2027 Q1, onboarding
        _account("sf:001A00000000002AAA", "Bravo", 200.0, "ann@example.com", 200, 200),  # 2027-06-08: 2027 Q2, adoption
        _account("sf:001A00000000003AAA", "Charlie", 300.0, "bob@example.com", 20, 800, "enterprise"),  # 2026 Q4, renewal window
        _account("sf:001A00000000004AAA", "Delta", 400.0, "bob@example.com", 30, None),  # 2026 Q4, renewal window
    ]
    opps = [{"opportunity_id": "sf:006A00000000001AAA", "account_id": "sf:001A00000000002AAA", "name": "Bravo renewal", "stage": "Proposal",
             "amount": 1000.0, "probability": 0.5, "close_date": "2026-12-15", "type": "renewal", "is_closed": False, "is_won": False},
            {"opportunity_id": "sf:006A00000000002AAA", "account_id": "sf:001A00000000004AAA", "name": "Delta won", "stage": "Closed Won",
             "amount": 5000.0, "probability": 1.0, "close_date": "2026-10-01", "type": "expansion", "is_closed": True, "is_won": True}]
    owners = [{"owner_id": "sf:005A", "email": "ann@example.com", "name": "Ann Archer"},
              {"owner_id": "sf:005B", "email": "bob@example.com", "name": "Bob Baker"}]
    with store.begin() as conn:
        store.upsert_replica(conn, "salesforce", "accounts", [a["account_id"] for a in accounts], [dumps(a) for a in accounts], NOW)
        store.upsert_replica(conn, "salesforce", "opportunities", [o["opportunity_id"] for o in opps], [dumps(o) for o in opps], NOW)
        store.upsert_replica(conn, "salesforce", "owners", [o["owner_id"] for o in owners], [dumps(o) for o in owners], NOW)
        store.set_cursor(conn, "salesforce", "accounts", NOW)
    store.set_crm_instance("salesforce", {"instance_url": "https://acme.my.salesforce.com"}, NOW)
    ids = [a["account_id"] for a in accounts]
    earlier = dict(zip(ids, (50.0, 30.0, 60.0, 80.0)))
    latest = dict(zip(ids, ((38.0, "Red", "down -12.0 (30d)"), (20.0, "Red", "stable -10.0 (30d)"),
                            (66.0, "Yellow", "up +6.0 (30d)"), (90.0, "Green", "new (no 30d history)"))))
    for run_id, at, values in (("r1", NOW - timedelta(days=1), {k: (v, None, None) for k, v in earlier.items()}), ("r2", NOW, latest)):
        store.add_score_history([
            {"run_id": run_id, "account_id": aid, "scored_at": utc_naive(at), "score": s,
             "band": b or ("Red" if s <= 40 else "Yellow" if s <= 70 else "Green"), "confidence": 0.8,
             "dimension_json": dumps({"product": s, "support": 100 - s, **(OVERRIDDEN if (run_id, aid) == ("r2", ids[0]) else {})}),
             "drivers": "Logins down to 0.4/user/week", "trend": t or "new (no 30d history)"}
            for aid, (s, b, t) in values.items()
        ])
    store.record_confirmed("salesforce", "opportunities", {"sf:006A00000000001AAA": {"Health_Adjusted_Probability__c": dumps(0.4)}}, "r2", NOW)
    with store.begin() as conn:
        for i, (opened, hours) in enumerate(((None, -1), (None, 2), (None, 48), (-14, 10), (-160, 30))):
            conn.execute(insert(store.tables["episodes"]).values(
                episode_id=f"e{i}", crm="salesforce", account_id=ids[0], playbook="at_risk_intervention", status="open",
                task_key=f"k{i}", task_id=f"00TA0000000000{i}AAA", task_due_at=utc_naive(NOW + timedelta(hours=hours)), task_status="open",
                opened_at=utc_naive(NOW + timedelta(hours=opened)) if opened is not None else None, owner_email="ann@example.com"))
    return store


@pytest.fixture(scope="module")
def page(hand_store, report_settings, browser, tmp_path_factory):
    info = write_report(hand_store, report_settings, tmp_path_factory.mktemp("hand-report") / "r.html", now=NOW)
    assert info.accounts == 4
    opened = open_page(browser, info.path)
    yield opened.page
    assert opened.errors == []
    opened.close()


def _rows(page, table: str, *attrs: str) -> list[tuple]:
    return page.evaluate("""([table, attrs]) => [...document.querySelectorAll(table + ' tr[data-' + attrs[0] + ']')]
        .map(r => attrs.map(a => r.getAttribute('data-' + a)))""", [table, list(attrs)])


def test_given_hand_checked_store_then_bands_and_arr_at_risk_match_the_arithmetic(page):
    assert band_rows(page) == {"Red": 2, "Yellow": 1, "Green": 1}
    assert kpi(page, "arr-at-risk") == "300.00"  # Alpha 100 + Bravo 200, both Red
    assert kpi(page, "arr") == "1000.00"
    assert kpi(page, "mean-score") == "53.50"  # (38 + 20 + 66 + 90) / 4
    assert _rows(page, "#top-at-risk", "account-id") == [["sf:001A00000000002AAA"], ["sf:001A00000000001AAA"]]  # by ARR


def test_given_hand_checked_store_then_improving_declining_and_net_trend_match(page):
    # the engine's 30-day momentum where recorded (Alpha down, Bravo stable, Charlie up); Delta has none: its change
    # since the previous day (+10, beyond the stable band of 5) makes it improving
    assert (kpi(page, "improving"), kpi(page, "declining"), kpi(page, "net-trend")) == ("2", "1", "1")
    assert page.text_content("#kpi-net-trend") == "Positive (+1)"
    assert _rows(page, "#movers-table", "direction", "accounts") == [["Improving", "2"], ["Stable", "1"], ["Declining", "1"], ["No trend yet", "0"]]


def test_given_hand_checked_store_then_the_renewal_forecast_matches_by_quarter(page):
    # health-adjusted = ARR x the forecast adjustment of a renewal at probability 1 (band_multipliers, max swing 30%):
    # Alpha 38 -> Neutral x1.0, 30-day delta -12 -> declining x0.8: 0.8; Charlie 66 -> x1.0; Delta 90 -> x1.4 capped at 1.
    # Bravo 20 -> bottom range, renewal -> churn-risk x0.5, delta -10 -> x0.8 = 0.4, held at the 30% swing: 0.7.
    assert _rows(page, "#renewal-forecast", "quarter", "accounts", "arr", "adjusted", "at-risk") == [
        ["2026 Q4", "2", "700.00", "700.00", "0.00"],        # Charlie 300 + Delta 400; neither at risk
        ["2027 Q1", "1", "100.00", "80.00", "100.00"],       # Alpha 100 x 0.8; Red
        ["2027 Q2", "1", "200.00", "140.00", "200.00"],      # Bravo 200 x 0.7; Red
    ]
    # the pipeline: only the open opportunity; 1000 x 0.5 before, 1000 x 0.4 (the confirmed write-back value) after
    assert _rows(page, "#forecast-table", "quarter", "opps", "before", "after") == [["2026 Q4", "1", "500.00", "400.00"]]


def test_given_hand_checked_store_then_renewals_at_risk_and_lifecycle_match(page):
    # renewals within 90 days outside Green: Charlie (20 days, Yellow); Delta renews in 30 days but is Green
    assert _rows(page, "#renewals-at-risk", "account-id") == [["sf:001A00000000003AAA"]]
    # tenure stages (onboarding <= 90 days, adoption <= 365) unless inside the 60-day renewal window
    assert sorted(_rows(page, "#lifecycle-table", "stage", "accounts")) == [["adoption", "1"], ["onboarding", "1"], ["renewal window", "2"]]
    assert sorted(_rows(page, "#segment-table", "segment", "accounts", "arr-at-risk")) == [
        ["enterprise", "1", "0.00"], ["mid_market", "3", "300.00"]]


def test_given_hand_checked_store_then_sla_states_are_most_urgent_first(page):
    # "due soon" = the last quarter of the SLA window, at least 4 h; no open time -> a 24 h window (6 h):
    # e0 due 1 h ago: breached; e1 in 2 h: due soon; e2 in 48 h: on time; e3 opened 14 h ago, due in 10 h: on time;
    # e4 a 190 h window due in 30 h (last 47.5 h): due soon
    assert [r[0] for r in _rows(page, "#task-table", "sla")] == ["breached", "due soon", "due soon", "on time", "on time"]
    assert _rows(page, "#owner-table", "owner", "open-tasks", "breached")[0] == ["ann@example.com", "5", "1"]


def test_given_hand_checked_store_then_a_filter_recomputes_every_figure(page):
    apply_filter(page, "f-owner", "Bob Baker")  # Charlie (Yellow, 300) and Delta (Green, 400)
    assert band_rows(page) == {"Yellow": 1, "Green": 1}
    assert (kpi(page, "accounts"), kpi(page, "arr"), kpi(page, "arr-at-risk")) == ("2", "700.00", "0.00")
    assert _rows(page, "#renewal-forecast", "quarter", "arr") == [["2026 Q4", "700.00"]]
    assert _rows(page, "#task-table", "sla") == []
    page.click("#f-reset")
    assert kpi(page, "accounts") == "4"


def test_given_the_override_then_the_account_page_says_why(page):
    page.evaluate("() => { location.hash = 'account=sf%3A001A00000000001AAA'; }")
    page.wait_for_function("() => document.getElementById('account-detail').dataset.accountId === 'sf:001A00000000001AAA'")
    facts = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#detail-facts [data-fact]')]
        .map(f => [f.dataset.fact, f.textContent.slice(f.dataset.fact.length)]))""")
    assert facts["CSM override"] == "CSM sentiment red: one tier down (computed band Yellow)"
    assert facts["Trend"] == "down -12.0 (30d)" and facts["Owner"] == "Ann Archer"
    dims = page.evaluate("() => [...document.querySelectorAll('#detail-facts table.dimensions tbody tr')].map(r => [...r.cells].map(c => c.textContent))")
    assert dims == [["Product", "38.0"], ["Support", "62.0"]]  # the override keys are not dimensions
    # two scored days: the account's trend is drawn with both points
    assert page.get_attribute("#detail-chart", "data-points") == "2"


def test_given_hand_checked_store_when_loaded_then_the_data_layer_agrees(hand_store, report_settings):
    data = load_report_data(hand_store, report_settings, now=NOW)
    factors = dict(zip(data.accounts["name"], data.accounts["renewal_factor"].round(3)))
    assert factors == {"Alpha": 0.8, "Bravo": 0.7, "Charlie": 1.0, "Delta": 1.0}
    # priority: Red first, then the steeper 30-day decline (Alpha -12 before Bravo -10)
    assert list(data.accounts["name"]) == ["Alpha", "Bravo", "Charlie", "Delta"]
    assert data.scored_days == 2 and data.owners["bob@example.com"] == "Bob Baker"


def test_given_data_quality_kpis_then_the_quality_view_lists_them_per_source(hand_store, report_settings):
    """The shape sync/data_quality.py `latest()` returns (per source: KPI -> value, or subject -> value)."""
    from healthsync.sync.report.render import render_report

    data = load_report_data(hand_store, report_settings, now=NOW)
    data.data_quality = {
        "run_id": "r2", "measured_at": "2026-11-20T12:00:00+00:00", "breached": ["salesforce completeness of arr 91.0% < 95%"],
        "sources": {
            "salesforce": {"completeness": {"arr": 0.91, "renewal_date": 0.99}, "freshness_hours": 2.0, "error_rate": 0.004,
                           "duplicate_ids": {"accounts": 2, "opportunities": 1}},
            "warehouse": {"freshness_hours": 30.0, "key_match_rate": 0.97},
        },
    }
    html, _ = render_report(data, report_settings)
    rows = dict(re.findall(r'<tr data-source="(\w+)".*?</td>\s*<td class="num">(.*?)</td>', html, flags=re.S))
    assert set(rows) == {"salesforce", "warehouse"}
    assert rows["salesforce"].startswith("91.0%") and "arr" in rows["salesforce"]  # the lowest completeness, and of what
    salesforce_row = re.search(r'<tr data-source="salesforce".*?</tr>', html, flags=re.S).group(0)
    assert "0.4%" in salesforce_row and ">3<" in salesforce_row  # error rate; duplicate ids summed over objects
    assert "97.0%" in re.search(r'<tr data-source="warehouse".*?</tr>', html, flags=re.S).group(0)
    assert "salesforce completeness of arr 91.0% &lt; 95%" in html
