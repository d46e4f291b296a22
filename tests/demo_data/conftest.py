"""Shared fixtures: one small portfolio and one small history per test session (generation is deterministic)."""

import pytest

from healthsync.connectors.demo_data import generate_history, generate_portfolio


@pytest.fixture(scope="session")
def portfolio():
    return generate_portfolio(3000, seed=11)


@pytest.fixture(scope="session")
def history():
    return generate_history(6000, seed=5)
