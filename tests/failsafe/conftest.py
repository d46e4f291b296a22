"""Fixtures of the failure-contract tests (helpers: failsafe_cli.py)."""

from __future__ import annotations

import json

import pytest

from healthsync.connectors.sandbox import Sandbox

from failsafe_cli import FAST_RETRIES, clean_env


@pytest.fixture
def world(tmp_path):
    """A started sandbox (fields precreated), its ready file, and an environment on a fresh state db."""
    started: list[Sandbox] = []

    def make(accounts: int = 12, seed: int = 5, *, precreate_fields: bool = True, **kwargs):
        kwargs.setdefault("slack_message_interval_s", 0)
        # these tests are about CRM failures, not Slack's history budget: an internal app reads history at
        # Tier 3, so a rerun that settles a maybe-sent message after a kill never waits a minute for it
        kwargs.setdefault("slack_app_type", "internal")
        sb = Sandbox(accounts=accounts, seed=seed, precreate_fields=precreate_fields, **kwargs).start()
        started.append(sb)
        ready = tmp_path / f"ready-{len(started)}.json"
        ready.write_text(json.dumps(sb.ready))
        env = clean_env(f"sqlite:///{tmp_path}/state-{len(started)}.db", **FAST_RETRIES)
        return sb, ready, env

    yield make
    for sb in started:
        sb.stop()

