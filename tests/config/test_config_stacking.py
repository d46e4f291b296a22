"""Stacked configs: `--config` repeated on every command, later files over earlier ones (issue 11, item 4)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from healthsync.config.settings import ConfigError, load_settings

BIN = Path(sys.executable).with_name("healthsync")

CUSTOM = {"model": {"metrics": [
    {"name": "usage", "label": "Usage", "dimension": "product", "weight": 0.6,
     "rule": {"type": "linear", "column": "usage_hours", "zero_at": 0, "full_at": 40}},
    {"name": "nps", "label": "NPS", "dimension": "sentiment", "weight": 0.4,
     "rule": {"type": "linear", "column": "nps", "zero_at": 0, "full_at": 10}},
]}}
OVERLAY = {"model": {"metric_weights": {"usage": 0.25, "nps": 0.75},
                     "metric_rules": {"nps": {"type": "linear", "column": "nps", "zero_at": 10, "full_at": 0}}},
           "forecast": {"enabled": False}}


def healthsync(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def files(tmp_path):
    base, overlay = tmp_path / "base.yaml", tmp_path / "overlay.yaml"
    base.write_text(yaml.safe_dump(CUSTOM))
    overlay.write_text(yaml.safe_dump(OVERLAY))
    return base, overlay


def test_given_a_base_and_an_overlay_when_stacked_then_later_files_win_key_by_key(files, tmp_path):
    base, overlay = files
    settings = load_settings([base, overlay])
    assert {m.name: m.weight for m in settings.model.metrics} == {"usage": 0.25, "nps": 0.75}
    nps = settings.model.metrics[1].rule
    assert (nps.zero_at, nps.full_at) == (10, 0)  # metric_rules replaced only that rule
    assert settings.model.metrics[0].rule.full_at == 40
    assert settings.forecast.enabled is False and settings.forecast.max_swing == 0.3  # the rest from the defaults
    third = tmp_path / "third.yaml"
    third.write_text(yaml.safe_dump({"forecast": {"enabled": True, "max_swing": 0.2}}))
    stacked = load_settings([base, overlay, third])
    assert stacked.forecast.enabled is True and stacked.forecast.max_swing == 0.2


def test_given_an_overlay_alone_when_loaded_then_the_unknown_metrics_are_named_with_the_fix(files):
    _, overlay = files
    with pytest.raises(ConfigError) as err:
        load_settings([overlay])
    text = str(err.value)
    assert "model.metric_weights: unknown metrics ['nps', 'usage']" in text and "--config base.yaml" in text
    assert str(overlay) in text


def test_given_two_files_when_config_validate_and_show_then_the_stack_is_checked_and_shown(files):
    base, overlay = files
    r = healthsync("config", "validate", base, overlay)
    assert r.returncode == 0 and f"valid: {base} + {overlay}" in r.stdout, r.stderr
    r = healthsync("config", "validate", overlay)
    assert r.returncode == 2 and "unknown metrics" in r.stderr
    r = healthsync("config", "show", "--config", base, "--config", overlay)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert [m["weight"] for m in shown["model"]["metrics"]] == [0.25, 0.75]
    assert shown["forecast"]["enabled"] is False


def test_given_a_fitted_forecast_without_its_map_when_validated_then_the_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"forecast": {"method": "fitted"}}))
    r = healthsync("config", "validate", bad)
    assert r.returncode == 2 and "forecast.fitted" in r.stderr, r.stderr
