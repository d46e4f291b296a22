"""Fixture: a running Sandbox seeded with the 30-account hand-made portfolio (sandbox_helpers)."""

import pytest

from healthsync.connectors.sandbox import Sandbox
from sandbox_helpers import tiny_portfolio


@pytest.fixture
def sandbox():
    with Sandbox(portfolio=tiny_portfolio(30)) as sb:
        yield sb
