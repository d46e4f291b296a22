"""Fixtures for the connector tests: sandboxes on loopback, the default mapping, a fast retry policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from connectors.demo_data import generate_portfolio
from connectors.retry import RetryPolicy
from connectors.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]
MAPPING = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())["mapping"]

#: tiny waits so fault tests stay fast; a Retry-After of 1 s (the emulators' default) is still honoured
FAST = RetryPolicy(max_attempts=12, max_total_seconds=40, base_wait=0.01, max_wait=0.1, max_retry_after=2, timeout=10)


def accounts_only(n: int, seed: int):
    """A generated portfolio with accounts and owners but no opportunities or tickets (cheap to seed)."""
    p = generate_portfolio(n, seed)
    return dataclasses.replace(p, opportunities=p.opportunities.iloc[:0], tickets=p.tickets.iloc[:0])


@pytest.fixture(scope="module")
def small_sandbox():
    """A small full portfolio (accounts, opportunities, tickets) with the healthsync fields created."""
    with Sandbox(accounts=12, seed=3, precreate_fields=True) as sb:
        yield sb


@pytest.fixture(scope="module")
def big_sandbox():
    """2,500 accounts in each CRM (no opportunities or tickets): the push-volume tests."""
    with Sandbox(portfolio=accounts_only(2500, 5), seed=5, precreate_fields=True) as sb:
        yield sb
