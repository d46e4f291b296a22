"""Fixtures for the connector tests: sandboxes on loopback, the default mapping, a fast retry policy."""

from __future__ import annotations

import dataclasses

import pytest

from healthsync.config.settings import load_settings

from healthsync.connectors.demo_data import generate_portfolio
from healthsync.connectors.retry import RetryPolicy
from healthsync.connectors.sandbox import Sandbox

#: the mapping exactly as the CLI passes it (the validated settings, dumped to plain dicts)
_MAPPING = load_settings(environ={}).mapping
MAPPING = {"salesforce": _MAPPING.salesforce.model_dump(), "hubspot": _MAPPING.hubspot.model_dump()}

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
