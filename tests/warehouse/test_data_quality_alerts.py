"""Data-quality KPIs: recorded per run, and the ops channel told once per change of state."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from healthsync.config.settings import load_settings
from healthsync.connectors.demo_data import generate_portfolio
from healthsync.connectors.sandbox import Sandbox
from healthsync.connectors.slack import slack_from_ready
from healthsync.sync import data_quality as dq
from healthsync.sync.state import open_store
from healthsync.sync.status import status

T0 = datetime(2026, 3, 1, 6, 0, tzinfo=timezone.utc)


def _report(completeness: float, freshness: float = 2.0) -> dict:
    return {"warehouse": {"completeness": {"active_users_30d": completeness}, "freshness_hours": freshness,
                          "error_rate": 0.0, "duplicate_ids": {"account_keys": 0}, "key_match_rate": 0.99}}


def _alerts(sb: Sandbox) -> list[str]:
    return [m["text"] for m in sb.slack_messages() if m["channel_name"] == "#healthsync-alerts"]


def test_given_a_kpi_crossing_its_threshold_then_the_ops_channel_hears_once_per_change_of_state(tmp_path):
    settings = load_settings()
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    with Sandbox(accounts=0, slack_message_interval_s=0) as sb:
        slack = slack_from_ready(sb.ready)

        def run(n: int, report: dict) -> int:
            now = T0 + timedelta(days=n)
            pending = dq.record(store, f"run-{n}", dq.evaluate(report, settings), now)
            return dq.announce(store, slack, settings.escalation.ops_channel, pending, now)

        assert run(0, _report(0.99)) == 0 and _alerts(sb) == []  # healthy from the start: nothing to say
        assert run(1, _report(0.90)) == 1  # completeness falls below 95% (seed 000)
        assert run(2, _report(0.91)) == 0  # still below: already told
        assert run(3, _report(0.80, freshness=30.0)) == 1  # a second KPI breaks (over 24 h stale, seed 003)
        assert run(4, _report(0.97, freshness=30.0)) == 1  # completeness recovers
        alerts = _alerts(sb)
        assert len(alerts) == 3
        assert "below threshold" in alerts[0] and "warehouse completeness (active_users_30d): 90.0% (min 95%)" in alerts[0]
        assert "freshness_hours" in alerts[1] and "completeness" not in alerts[1]
        assert "back within threshold: warehouse completeness (active_users_30d): 97.0%" in alerts[2]

        shown = status(store)["data_quality"]
        assert shown["run_id"] == "run-4"
        assert shown["sources"]["warehouse"]["completeness"] == {"active_users_30d": 0.97}
        assert shown["breached"] == ["warehouse freshness_hours: 30 (max 24)"]
    store.close()


def test_given_the_ops_post_fails_then_the_change_is_announced_at_the_next_run(tmp_path):
    settings = load_settings()
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    with Sandbox(accounts=0, slack_message_interval_s=0) as sb:
        slack = slack_from_ready(sb.ready)
        pending = dq.record(store, "run-1", dq.evaluate(_report(0.5), settings), T0)
        assert dq.announce(store, slack, "#no-such-channel", pending, T0) == 0  # Slack refuses: channel_not_found
        pending = dq.record(store, "run-2", dq.evaluate(_report(0.5), settings), T0 + timedelta(days=1))
        assert [k.subject for k in pending] == ["active_users_30d"]
        assert dq.announce(store, slack, settings.escalation.ops_channel, pending, T0) == 1
        assert dq.record(store, "run-3", dq.evaluate(_report(0.5), settings), T0 + timedelta(days=2)) == []
    store.close()


def test_given_a_run_killed_after_posting_but_before_recording_then_the_next_run_finds_it_and_posts_nothing(tmp_path):
    """The window a SIGKILL can hit: the alert is in the channel, the state still says 'not announced'."""
    from sqlalchemy import update

    from healthsync.sync.state import data_quality_state

    settings = load_settings()
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    with Sandbox(accounts=0, slack_message_interval_s=0) as sb:
        slack = slack_from_ready(sb.ready)
        pending = dq.record(store, "run-1", dq.evaluate(_report(0.5), settings), T0)
        assert dq.announce(store, slack, settings.escalation.ops_channel, pending, T0) == 1
        with store.begin() as conn:  # as the killed process left it
            conn.execute(update(data_quality_state).where(data_quality_state.c.breached.is_(True)).values(announced=False))
        later = T0 + timedelta(hours=1)
        pending = dq.record(store, "run-2", dq.evaluate(_report(0.5), settings), later)
        assert [k.subject for k in pending] == ["active_users_30d"]
        sb.advance_clock(120)  # the history budget of a non-Marketplace app: one read a minute
        assert dq.announce(store, slack, settings.escalation.ops_channel, pending, later) == 0
        assert len(_alerts(sb)) == 1
        assert dq.record(store, "run-3", dq.evaluate(_report(0.5), settings), later + timedelta(hours=1)) == []
    store.close()


def test_given_the_demo_generator_then_usage_is_extra_and_reproduces_the_usage_signals(tmp_path):
    plain = generate_portfolio(120, seed=9)
    with_usage = generate_portfolio(120, seed=9, usage=True)
    for name in ("accounts", "opportunities", "tickets", "owners"):
        assert getattr(plain, name).equals(getattr(with_usage, name)), name  # its own random stream
    from healthsync.connectors.demo_data import write_usage
    from healthsync.config.settings import WarehouseSource
    from healthsync.connectors.warehouse import WarehouseConnector
    from healthsync.engine.usage import derive_usage

    path = write_usage([with_usage], tmp_path / "usage.duckdb", T0)
    config = WarehouseSource.model_validate({"url": f"duckdb:///{path}", "events": {
        "table": "usage_events", "user_id": "user_id", "feature": "feature", "value": "value"}})
    connector = WarehouseConnector(config)
    usage = derive_usage(connector.pull(T0).features).set_index("account_key")
    connector.close()
    accounts = with_usage.accounts.assign(key=with_usage.usage.product_ids.to_pylist()).set_index("key")
    active = accounts["active_users_30d"].astype(float)
    assert (usage["active_users_30d"].reindex(accounts.index).fillna(0) == active).all()
    used = accounts.loc[active > 0]
    assert (usage.loc[used.index, "features_used"] == used["features_used"].astype(float)).all()
    # logins per user per week as the CRM field says, up to rounding to whole logins
    close = (usage.loc[used.index, "logins_per_user_week"] - used["logins_per_user_week"]).abs() <= 7 / 30 / used["active_users_30d"].astype(float) + 1e-9
    assert close.mean() > 0.97
    assert accounts["product_account_id"].isna().sum() == 2  # 1 in 50 CRM records lacks the product id
