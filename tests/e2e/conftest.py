"""End-to-end fixtures: a small sandbox per test and settings on a fresh state db (helpers: e2e_helpers.py).

Everything goes through the official clients over loopback HTTP; the checks read
the emulators' own records and request log (`Sandbox.records`, `Sandbox.requests`).
"""

from __future__ import annotations

import pytest

from healthsync.config.settings import load_settings
from healthsync.connectors.sandbox import Sandbox
from healthsync.sync.state import StateStore, open_store


@pytest.fixture
def settings(tmp_path):
    s = load_settings()
    s.state.url = f"sqlite:///{tmp_path}/state/state.db"
    # Every sandbox record was created seconds ago, so the default 5-minute lookback would
    # re-read the whole portfolio on every run; the cursor alone finds what changed.
    s.sources.salesforce.lookback_minutes = 0
    s.sources.hubspot.lookback_minutes = 0
    return s


@pytest.fixture
def make_sandbox():
    started: list[Sandbox] = []

    def make(accounts: int = 40, seed: int = 11, **kwargs) -> Sandbox:
        kwargs.setdefault("slack_message_interval_s", 0)
        sb = Sandbox(accounts=accounts, seed=seed, **kwargs).start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()


@pytest.fixture
def store_of():
    opened: list[StateStore] = []

    def open_(settings) -> StateStore:
        s = open_store(settings.state.url)
        opened.append(s)
        return s

    yield open_
    for s in opened:
        s.close()


