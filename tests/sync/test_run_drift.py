"""Each run records drift warnings (issue 7): the silent broken integration of seed 003."""

from __future__ import annotations

from healthsync.config.settings import load_settings
from healthsync.connectors.demo_data import generate_portfolio
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.run import run_cycle
from healthsync.sync.state import open_store


def test_given_logins_zero_in_one_crm_only_when_run_then_no_dead_input_warning_but_drift_is_recorded_per_metric(tmp_path):
    settings = load_settings()
    settings.state.url = f"sqlite:///{tmp_path}/state.db"
    portfolio = generate_portfolio(25, seed=4)
    portfolio.accounts["logins_per_user_week"] = 0.0  # the product-analytics sync broke
    with Sandbox(portfolio=portfolio, hubspot_portfolio=generate_portfolio(25, seed=5), precreate_fields=True,
                 slack_message_interval_s=0) as sb:
        summary = run_cycle(settings, ready=sb.ready, json_mode=True)
    assert summary.exit_code in (0, 1), summary.errors
    # 25 of 50 accounts are zero: not "every account", so no dead-input warning across both CRMs...
    assert not any("login_frequency" in w and "every account" in w for w in summary.drift_warnings)
    store = open_store(settings.state.url)
    rows = store.count("drift", run_id=summary.run_id)
    assert rows == len(settings.model.metrics)  # one row per metric, recorded for the report


def test_given_every_account_has_zero_logins_then_the_run_warns_and_records_it(tmp_path):
    settings = load_settings()
    settings.state.url = f"sqlite:///{tmp_path}/state.db"
    broken, also_broken = generate_portfolio(25, seed=4), generate_portfolio(25, seed=5)
    for p in (broken, also_broken):
        p.accounts["logins_per_user_week"] = 0.0
    with Sandbox(portfolio=broken, hubspot_portfolio=also_broken, precreate_fields=True, slack_message_interval_s=0) as sb:
        summary = run_cycle(settings, ready=sb.ready, json_mode=True)
    warnings = [w for w in summary.drift_warnings if w.startswith("metric login_frequency:")]
    assert len(warnings) == 1 and "every account" in warnings[0]
    assert "drift_warnings" in summary.to_json()
    store = open_store(settings.state.url)
    assert store.count("drift", run_id=summary.run_id, metric="login_frequency", warning=True) == 1
    assert store.count("drift", run_id=summary.run_id, metric="feature_adoption", warning=True) == 0
