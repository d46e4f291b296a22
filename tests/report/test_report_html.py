"""The report rendered from stores populated through the StateStore API (no browser needed).

One store is built by hand so every figure can be checked with arithmetic; a
generated one checks the figures against the store at scale, escaping of CRM
text, the owner view, the drill-down cap and the file size.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import insert

from healthsync.config.settings import load_settings
from dom import by_id, chart_is_drawn, charts, parse, rows
from report_store import NOW, build_store, expected_figures
from healthsync.sync.report import write_report
from healthsync.sync.report_data import load_report_data
from healthsync.sync.state import dumps, open_store, utc_naive

OVERRIDDEN = {"override": True, "override_reason": "CSM sentiment red: one tier down", "raw_band": "Yellow"}
EVIL = '<script>alert("owned")</script> & <b>Co</b>'


@pytest.fixture(scope="module")
def settings():
    return load_settings(environ={})


def _account(aid, name, arr, owner, renewal_days):
    return {"account_id": aid, "name": name, "segment": "mid_market", "arr": arr, "owner_email": owner,
            "renewal_date": utc_naive(NOW + timedelta(days=renewal_days)).date().isoformat(), "csm_sentiment": "red"}


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory):
    """Four accounts, two runs; every number below is worked out in the test's comments."""
    url = f"sqlite:///{tmp_path_factory.mktemp('hand')}/state.db"
    store = open_store(url)
    accounts = [
        _account("sf:A", "Alpha", 100.0, "ann@example.com", 10),
        _account("sf:B", "Bravo", 200.0, "ann@example.com", 200),
        _account("sf:C", "Charlie", 300.0, "bob@example.com", 20),
        _account("sf:D", "Delta", 400.0, "bob@example.com", 30),
    ]
    opps = [{"opportunity_id": "006X", "account_id": "sf:B", "name": "Bravo renewal", "stage": "Proposal", "amount": 1000.0,
             "probability": 0.5, "close_date": "2026-12-15", "type": "renewal", "is_closed": False, "is_won": False},
            {"opportunity_id": "006Y", "account_id": "sf:D", "name": "Delta won", "stage": "Closed Won", "amount": 5000.0,
             "probability": 1.0, "close_date": "2026-10-01", "type": "expansion", "is_closed": True, "is_won": True}]
    with store.begin() as conn:
        store.upsert_replica(conn, "salesforce", "accounts", [a["account_id"] for a in accounts], [dumps(a) for a in accounts], NOW)
        store.upsert_replica(conn, "salesforce", "opportunities", [o["opportunity_id"] for o in opps], [dumps(o) for o in opps], NOW)
        store.set_cursor(conn, "salesforce", "accounts", NOW)
    earlier = {"sf:A": 50.0, "sf:B": 30.0, "sf:C": 60.0, "sf:D": 80.0}
    latest = {"sf:A": (38.0, "Red", "down -12.0 (30d)"), "sf:B": (20.0, "Red", "stable -10.0 (30d)"),
              "sf:C": (66.0, "Yellow", "up +6.0 (30d)"), "sf:D": (90.0, "Green", "new (no 30d history)")}
    for run_id, at, values in (("r1", NOW - timedelta(days=1), {k: (v, None, None) for k, v in earlier.items()}), ("r2", NOW, latest)):
        store.add_score_history([
            {"run_id": run_id, "account_id": aid, "scored_at": utc_naive(at), "score": s,
             "band": b or ("Red" if s <= 40 else "Yellow" if s <= 70 else "Green"), "confidence": 0.8,
             "dimension_json": dumps({"product": s, "support": 100 - s, **(OVERRIDDEN if (run_id, aid) == ("r2", "sf:A") else {})}),
             "drivers": "Logins down to 0.4/user/week",
             "trend": t or "new (no 30d history)"}
            for aid, (s, b, t) in values.items()
        ])
    store.record_confirmed("salesforce", "opportunities", {"006X": {"Health_Adjusted_Probability__c": dumps(0.4)}}, "r2", NOW)
    with store.begin() as conn:
        for i, (opened, hours) in enumerate(((None, -1), (None, 2), (None, 48), (-14, 10), (-160, 30))):
            conn.execute(insert(store.tables["episodes"]).values(
                episode_id=f"e{i}", crm="salesforce", account_id="sf:A", playbook="at_risk_intervention", status="open",
                task_key=f"k{i}", task_id=f"00T{i}", task_due_at=utc_naive(NOW + timedelta(hours=hours)), task_status="open",
                opened_at=utc_naive(NOW + timedelta(hours=opened)) if opened is not None else None,
                owner_email="ann@example.com"))
    return store


def test_given_hand_checked_store_when_loaded_then_figures_match_the_arithmetic(hand_store, settings):
    data = load_report_data(hand_store, settings, now=NOW)
    bands = data.band_summary.set_index("band")
    assert bands.loc["Red", "accounts"] == 2 and bands.loc["Yellow", "accounts"] == 1 and bands.loc["Green", "accounts"] == 1
    assert bands.loc["Red", "arr"] == 300.0  # Alpha 100 + Bravo 200
    assert data.arr_at_risk == 300.0
    assert bands.loc["Red", "arr_share"] == pytest.approx(300 / 1000)
    assert list(data.top_at_risk["account_id"]) == ["sf:B", "sf:A"]  # by ARR
    # momentum from the engine's trend text; Delta has no 30d history: its change since r1 (+10) counts
    assert data.improving == 2 and data.declining == 1
    # trend: r1 mean (50+30+60+80)/4 = 55, r2 mean (38+20+66+90)/4 = 53.5
    assert list(data.trend["mean_score"]) == [55.0, 53.5]
    # renewals within 90 days outside Green: Alpha (10 d, Red), Charlie (20 d, Yellow); Delta is Green
    assert list(data.renewals_at_risk["account_id"]) == ["sf:A", "sf:C"]
    # forecast: only the open opportunity; base 1000 x 0.5, adjusted 1000 x 0.4 (the confirmed write-back value)
    q = data.forecast.set_index("quarter")
    assert list(q.index) == ["2026Q4"]
    assert q.loc["2026Q4", "base_expected"] == 500.0 and q.loc["2026Q4", "adjusted_expected"] == 400.0
    assert data.adjusted_source == "crm write-back"
    # SLA at NOW. "Due soon" = the last quarter of the window, at least 4 h; no open time -> a 24 h window (6 h):
    # e0 due 1 h ago: breached; e1 due in 2 h: due soon; e2 due in 48 h: on time;
    # e3 opened 14 h ago, due in 10 h (24 h window, last 6 h): on time; e4 a 190 h window due in 30 h (last 47.5 h): due soon
    assert list(data.tasks.sort_values("episode_id")["sla_status"]) == ["breached", "due soon", "on time", "on time", "due soon"]
    # CSM priority: Red first, then the steeper 30-day decline (Alpha -12 before Bravo -10)
    from healthsync.sync.report_data import priority_order

    assert list(priority_order(data.accounts, data.bands)["account_id"]) == ["sf:A", "sf:B", "sf:C", "sf:D"]


def test_given_hand_checked_store_when_rendered_then_the_page_shows_the_same_figures(hand_store, settings, tmp_path):
    info = write_report(hand_store, settings, tmp_path / "r.html", now=NOW)
    html = info.path.read_text()
    els = parse(html)
    assert by_id(els, "kpi-arr-at-risk").get("data-value") == "300.00"
    assert {r.get("data-band"): int(r.get("data-accounts")) for r in rows(els, "band-table", "data-band")} == {"Red": 2, "Yellow": 1, "Green": 1}
    assert [r.get("data-account-id") for r in rows(els, "top-at-risk", "data-account-id")] == ["sf:B", "sf:A"]
    # most urgent first
    assert [r.get("data-sla") for r in rows(els, "owner-ann_40_example_2e_com", "data-sla")] == ["breached", "due soon", "due soon", "on time", "on time"]
    assert info.accounts == 4 and info.charts == 4 + 4  # four portfolio charts, a history chart per drilled-down account
    alpha = by_id(els, "acct-sf_3a_A")
    facts_box = next(d for d in alpha.descendants() if d.tag == "div" and "facts" in d.classes)
    facts = {}
    for fact in (c for c in facts_box.children if c.tag == "div"):
        label = fact.children[0].text
        facts[label] = fact.text[len(label):].strip()
    assert facts["CSM override"] == "CSM sentiment red: one tier down (computed band Yellow)"
    assert facts["Trend"] == "down -12.0 (30d)"
    table = next(d for d in alpha.descendants() if d.tag == "table" and "dimensions" in d.classes)
    dims = [tuple(td.text for td in tr.children if td.tag == "td") for tr in table.descendants() if tr.tag == "tr"]
    dims = [d for d in dims if d]
    assert dims == [("product", "38.0"), ("support", "62.0")]  # the override keys are not listed as dimensions
    assert all(chart_is_drawn(c) for c in charts(els))


@pytest.fixture(scope="module")
def generated(tmp_path_factory, settings):
    """A generated portfolio (150 accounts, 3 runs; a few names carry markup) and its rendered report."""
    tmp = tmp_path_factory.mktemp("generated")
    store = build_store(f"sqlite:///{tmp}/s.db", n_accounts=150, runs=3, names={i: EVIL for i in range(0, 150, 15)})
    info = write_report(store, settings, tmp / "r.html", now=NOW)
    return store, info, info.path.read_text()


def test_given_crm_text_with_markup_when_rendered_then_it_is_escaped(generated):
    _store, _info, html = generated
    assert EVIL not in html
    assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt; &amp; &lt;b&gt;Co&lt;/b&gt;" in html
    assert len(re.findall(r"<script\b", html)) == 1  # only the report's own inline script
    assert not re.search(r"<(link|img|iframe)\b|src=|https?://(?!www\.w3\.org)", html)  # nothing to fetch


def test_given_generated_store_when_rendered_then_figures_equal_the_store(generated):
    store, info, html = generated
    els = parse(html)
    counts, arr_at_risk, top = expected_figures(store)
    shown = {r.get("data-band"): int(r.get("data-accounts")) for r in rows(els, "band-table", "data-band")}
    assert {k: v for k, v in shown.items() if v} == counts
    assert float(by_id(els, "kpi-arr-at-risk").get("data-value")) == pytest.approx(arr_at_risk, abs=0.01)
    assert [r.get("data-account-id") for r in rows(els, "top-at-risk", "data-account-id")] == top
    assert info.size_bytes < 1_500_000  # 150 accounts; the 10,000-account figure (< 5 MB) is in tests/benchmarks/bench_report.py


def test_given_owner_when_rendered_then_only_that_owners_book_is_shown(generated, settings, tmp_path):
    store, _info, _html = generated
    accounts = store.load_replica("salesforce", "accounts")
    owner = accounts[0]["owner_email"]
    mine = {a["account_id"] for a in accounts if a["owner_email"] == owner}
    info = write_report(store, settings, tmp_path / "r.html", owner=owner.upper(), now=NOW, drill_down_cap=5)
    els = parse(info.path.read_text())
    assert info.accounts == len(mine)
    owners = {e.get("data-owner") for e in els if e.tag == "details" and "owner" in e.classes}
    assert owners == {owner}
    shown = {e.get("data-account-id") for e in els if e.tag == "tr" and e.get("data-account-id")}
    assert shown and shown <= mine


def test_given_more_qualifying_accounts_than_the_cap_when_rendered_then_drill_down_is_capped_and_said_so(generated, settings, tmp_path):
    store, _info, _html = generated
    info = write_report(store, settings, tmp_path / "r.html", now=NOW, drill_down_cap=20)
    els = parse(info.path.read_text())
    scope = by_id(els, "drill-scope")
    assert int(scope.get("data-shown")) == 20 < int(scope.get("data-qualified"))
    assert "capped at 20" in scope.text
    drilled = [e.get("data-account-id") for e in els if e.tag == "details" and "account" in e.classes]
    assert len(drilled) == 20
    # the at-risk accounts with the most ARR come first: the top-10 list is all drilled into
    assert [r.get("data-account-id") for r in rows(els, "top-at-risk", "data-account-id")] == drilled[:10]


def test_given_an_empty_store_when_rendered_then_the_report_says_so(tmp_path, settings):
    store = open_store(f"sqlite:///{tmp_path}/empty.db")
    info = write_report(store, settings, tmp_path / "sub" / "r.html", now=NOW)
    html = info.path.read_text()
    assert info.accounts == 0 and "No scored run in the state store yet" in html
    assert json.loads('"' + by_id(parse(html), "kpi-accounts").get("data-value") + '"') == "0"


def test_given_no_state_store_when_reporting_then_a_clear_error_names_the_key_without_the_password(tmp_path, settings):
    from healthsync.connectors.base import ConfigurationError
    from healthsync.sync.state import StateStore

    store = StateStore(f"sqlite:///{tmp_path}/nothing.db")
    with pytest.raises(ConfigurationError, match=r"state.url: no healthsync state .*healthsync run"):
        write_report(store, settings, tmp_path / "r.html", now=NOW)
    assert not (tmp_path / "r.html").exists()
    from healthsync.sync.report import redact_url

    assert "s3cret" not in redact_url("postgresql://u:s3cret@db.example.com/hs")


def test_given_a_recorded_backtest_when_rendered_then_its_headline_figures_are_shown(generated):
    _store, _info, html = generated
    table = by_id(parse(html), "backtest")
    shown = [tuple(td.text.strip() for td in tr.children if td.tag == "td") for tr in table.descendants() if tr.tag == "tr"]
    # the contract keys present in the stored report, in BACKTEST_FIGURES order; lists (by_period) are not flattened
    assert shown == [
        ("AUC (ranks churners below renewers)", "0.78"),
        ("PR-AUC", "0.41"),
        ("Brier score (lower is better)", "0.09"),
        ("Forecast MAPE before health adjustment (%)", "23.1"),
        ("Forecast MAPE after health adjustment (%)", "14.2"),
        ("Account snapshots tested", "4,000"),
        ("Churned in the horizon", "410"),
    ]
