"""Shared fixtures: one demo history (a few thousand accounts, six quarterly snapshots) and its calibrations.

Session-scoped because generating, backtesting and calibrating take seconds,
and every test here only reads them.
"""

import pytest

from healthsync.config.settings import load_settings
from healthsync.connectors.demo_data import generate_history
from healthsync.engine.calibration import calibrate

DEMO_ACCOUNTS = 3000
DEMO_SEED = 1


@pytest.fixture(scope="session")
def settings():
    return load_settings(None)


@pytest.fixture(scope="session")
def demo_history():
    return generate_history(DEMO_ACCOUNTS, seed=DEMO_SEED)


@pytest.fixture(scope="session")
def default_backtest(demo_history, settings):
    from healthsync.engine.backtest import backtest

    return backtest(demo_history, settings.model, settings.forecast)


@pytest.fixture(scope="session")
def calibrated(demo_history, settings):
    """method -> CalibrationResult on the demo history."""
    return {m: calibrate(demo_history, settings.model, settings.forecast, method=m) for m in ("correlation", "logistic")}
