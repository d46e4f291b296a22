"""`healthsync config ...` through the real console script, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from healthsync.config.settings import DEFAULT_CONFIG_PATH, load_settings

BIN = Path(sys.executable).with_name("healthsync")


def healthsync(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env.update(env_extra or {})
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=env, timeout=60)


def write_config(tmp_path, data, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def default_data():
    return yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())


def test_given_default_config_when_validated_then_exit_0():
    r = healthsync("config", "validate", str(DEFAULT_CONFIG_PATH))
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout


def test_given_weights_summing_to_0_9_when_validated_then_exit_2_naming_the_key(tmp_path):
    data = default_data()
    data["model"]["metrics"][0]["weight"] = 0.05  # 0.15 -> 0.05: the sum becomes 0.9
    r = healthsync("config", "validate", str(write_config(tmp_path, data)))
    assert r.returncode == 2
    assert "model.metrics" in r.stderr and "sum to 1" in r.stderr and "0.9" in r.stderr


def test_given_a_band_gap_when_validated_then_exit_2_naming_the_bands(tmp_path):
    data = default_data()
    data["model"]["bands"][1]["min"] = 45  # Red max 40, Yellow min 45
    r = healthsync("config", "validate", str(write_config(tmp_path, data)))
    assert r.returncode == 2
    assert "model.bands" in r.stderr and "gap between Red" in r.stderr


def test_given_an_unknown_key_when_validated_then_exit_2_naming_it(tmp_path):
    r = healthsync("config", "validate", str(write_config(tmp_path, {"model": {"wieghts": {}}})))
    assert r.returncode == 2
    assert "model.wieghts" in r.stderr and "unknown key" in r.stderr


def test_given_several_problems_when_validated_then_all_are_listed(tmp_path):
    data = default_data()
    data["model"]["metrics"][0]["weight"] = 0.05
    data["state"]["urll"] = "x"
    r = healthsync("config", "validate", str(write_config(tmp_path, data)))
    assert r.returncode == 2
    assert "state.urll" in r.stderr and "model" in r.stderr


def test_given_steps_not_descending_when_loaded_then_error_names_the_metric(tmp_path):
    data = default_data()
    data["model"]["metrics"][0]["rule"]["steps"] = [{"min": 1, "points": 70}, {"min": 5, "points": 100}]
    r = healthsync("config", "validate", str(write_config(tmp_path, data)))
    assert r.returncode == 2
    assert "model.metrics.0.rule.steps" in r.stderr and "descending" in r.stderr


def test_given_invalid_yaml_when_validated_then_line_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  method: [unclosed\n")
    r = healthsync("config", "validate", str(p))
    assert r.returncode == 2
    assert "line" in r.stderr and "Traceback" not in r.stderr


def test_given_a_secret_in_the_config_file_when_loaded_then_refused_with_env_var_name(tmp_path):
    p = write_config(tmp_path, {"sources": {"hubspot": {"access_token": "pat-na1-abc"}}})
    r = healthsync("config", "validate", str(p))
    assert r.returncode == 2
    assert "HEALTHSYNC__HUBSPOT__ACCESS_TOKEN" in r.stderr
    assert "pat-na1-abc" not in r.stderr + r.stdout


SENTINEL = "sentinel-SECRET-7f3a9c"


def test_given_secrets_in_environment_when_config_show_then_used_but_never_printed():
    env = {
        "HEALTHSYNC__SALESFORCE__PASSWORD": SENTINEL,
        "HEALTHSYNC__HUBSPOT__ACCESS_TOKEN": SENTINEL + "-hs",
        "HEALTHSYNC__SLACK__BOT_TOKEN": SENTINEL + "-slack",
        "HEALTHSYNC__SALESFORCE__USERNAME": "ops@example.com",
    }
    r = healthsync("config", "show", env_extra=env)
    assert r.returncode == 0, r.stderr
    assert SENTINEL not in r.stdout + r.stderr
    shown = json.loads(r.stdout)
    assert shown["sources"]["salesforce"]["password"] == "**********"
    assert shown["sources"]["salesforce"]["username"] == "ops@example.com"
    # ...and the value is really used by the settings object
    s = load_settings(environ=env)
    assert s.sources.salesforce.password.get_secret_value() == SENTINEL
    assert s.sources.hubspot.configured and s.live


def test_given_a_secrets_file_when_loaded_then_values_used_and_env_wins(tmp_path):
    f = tmp_path / "secrets.env"
    f.write_text(f"HEALTHSYNC__HUBSPOT__ACCESS_TOKEN={SENTINEL}\nHEALTHSYNC__SLACK__BOT_TOKEN=from-file-123\n")
    s = load_settings(environ={"HEALTHSYNC_SECRETS_FILE": str(f), "HEALTHSYNC__SLACK__BOT_TOKEN": "from-env-456"})
    assert s.sources.hubspot.access_token.get_secret_value() == SENTINEL
    assert s.sources.slack.bot_token.get_secret_value() == "from-env-456"
    assert SENTINEL not in repr(s) and SENTINEL not in s.model_dump_json()


def test_given_env_override_of_a_plain_key_then_typed_value_applies():
    s = load_settings(environ={"HEALTHSYNC__SOURCES__SALESFORCE__BULK_THRESHOLD": "500", "HEALTHSYNC__STATE__URL": "sqlite:///x.db"})
    assert s.sources.salesforce.bulk_threshold == 500
    # a relative SQLite path from the environment is anchored once, at load, so every command agrees
    assert s.state.url == f"sqlite:///{Path.cwd() / 'x.db'}"


def test_schema_is_json_schema_with_model_section():
    r = healthsync("config", "schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert "model" in schema["properties"] and "$defs" in schema


def test_four_band_scheme_is_expressible(tmp_path):
    data = {"model": {"bands": [
        {"name": "Critical", "min": 0, "max": 25, "at_risk": True},
        {"name": "At Risk", "min": 26, "max": 50, "at_risk": True},
        {"name": "Moderate", "min": 51, "max": 75},
        {"name": "Healthy", "min": 76, "max": 100},
    ], "segments": {}, "lifecycle": {"stages": [], "renewal_window": None}}}
    s = load_settings(write_config(tmp_path, data))
    assert [b.name for b in s.model.bands] == ["Critical", "At Risk", "Moderate", "Healthy"]


@pytest.mark.parametrize("override,expected", [({"Green": 80}, "Yellow"), ({"Yellow": 50}, "Red")])
def test_threshold_override_referencing_bands_is_checked(tmp_path, override, expected):
    from healthsync.config.model import apply_thresholds

    s = load_settings()
    bands = apply_thresholds(s.model.bands, override)
    names = [b.name for b in bands]
    i = names.index(expected)
    nxt = bands[i + 1]
    assert bands[i].max == nxt.min - 1
