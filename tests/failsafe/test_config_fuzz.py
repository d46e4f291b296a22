"""Fuzzed configs (issue 13 item 8, config half): 100 malformed configs, each refused with exit 2,
naming the offending key (or the YAML line), never a traceback.

Each example starts from the packaged defaults and breaks one thing: YAML structure, a value's
type, an unknown key, a crontab, the state URL, the bands, an unknown playbook, a bound. The
command is `healthsync config validate FILE`, run in-process through the same Typer app the
console script runs (a subprocess per example would take minutes).
"""

from __future__ import annotations

import copy
import traceback

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from healthsync.config.settings import DEFAULT_CONFIG_PATH
from healthsync.sync.cli import app

DEFAULTS = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
NAMES = st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True)


def _set(data: dict, path: str, value) -> dict:
    out = copy.deepcopy(data)
    node = out
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value
    return out


@st.composite
def unknown_key(draw):
    section = draw(st.sampled_from(["state", "sources.salesforce", "sources.hubspot", "model", "forecast", "escalation",
                                    "report", "sandbox", "retries", "playbooks"]))
    name = draw(NAMES.filter(lambda n: n not in ("url", "enabled", "path", "method")))
    node = DEFAULTS
    for p in section.split("."):
        node = node[p]
    if name in node:
        name += "_x"
    return _set(DEFAULTS, f"{section}.{name}", draw(st.integers() | st.text(max_size=5))), f"{section}.{name}"


BAD_TYPES = [
    ("sources.salesforce.bulk_threshold", st.text(alphabet="abcxyz", min_size=1, max_size=6)),
    ("sources.hubspot.tier", st.sampled_from(["gold", "enterprise", "free"])),
    ("sources.salesforce.quota_stop_share", st.floats(min_value=1.01, max_value=1e6) | st.floats(max_value=0)),
    ("model.confidence_floor", st.sampled_from(["high", [1, 2], {"a": 1}])),
    ("report.enabled", st.sampled_from([[1], {"x": 1}, "maybe"])),
    ("sandbox.accounts", st.integers(max_value=0)),
    ("retries.max_attempts", st.integers(max_value=0) | st.integers(min_value=51, max_value=10**6)),
    ("retries.max_total_seconds", st.floats(max_value=0, allow_nan=False)),
    ("escalation.digest_from", st.integers(max_value=1)),
    ("forecast.max_swing", st.sampled_from(["lots", [0.3]])),
]


@st.composite
def bad_type(draw):
    path, values = draw(st.sampled_from(BAD_TYPES))
    return _set(DEFAULTS, path, draw(values)), path


@st.composite
def bad_cron(draw):
    cron = draw(st.one_of(
        st.integers(min_value=60, max_value=999).map(lambda m: f"{m} * * * *"),
        st.integers(min_value=24, max_value=99).map(lambda h: f"0 {h} * * *"),
        st.integers(min_value=8, max_value=99).map(lambda d: f"0 6 * * {d}"),
        st.integers(min_value=13, max_value=99).map(lambda mo: f"0 6 1 {mo} *"),
        st.sampled_from(["* * * *", "* * * * * *", "every day", "0 6 * * MON-XYZ", "*/0 * * * *"]),
    ))
    job = draw(st.sampled_from(["run", "escalate", "pull", "report"]))
    return _set(DEFAULTS, "schedules", [{"job": job, "cron": cron}]), "schedules.0.cron"


@st.composite
def bad_url(draw):
    url = draw(st.one_of(
        st.text(alphabet="abc :/@#", min_size=1, max_size=20).filter(lambda t: "://" not in t),
        st.sampled_from(["mysql://u@h/db", "oracle://u@h/db", "nosuchdb://x/y", "sqlite:////proc/x/state.db",
                         "postgresql+nosuchdriver://u@h/db"]),
    ))
    return _set(DEFAULTS, "state.url", url), "state.url"


@st.composite
def bad_bands(draw):
    bands = copy.deepcopy(DEFAULTS["model"]["bands"])
    kind = draw(st.sampled_from(["gap", "overlap", "inverted", "empty", "unnamed"]))
    if kind == "gap":
        bands[1]["min"] = bands[0]["max"] + draw(st.integers(min_value=2, max_value=20))
    elif kind == "overlap":
        bands[1]["min"] = bands[0]["max"] - draw(st.integers(min_value=1, max_value=20))
    elif kind == "inverted":
        bands[2]["min"], bands[2]["max"] = 100, draw(st.integers(min_value=71, max_value=99))
    elif kind == "empty":
        bands = []
    else:
        del bands[0]["name"]
    return _set(DEFAULTS, "model.bands", bands), "model.bands"


@st.composite
def unknown_playbook(draw):
    name = draw(NAMES.filter(lambda n: n not in ("at_risk_intervention", "rapid_decline", "expansion_opportunity", "renewal_risk")))
    return _set(DEFAULTS, "playbooks.enabled", ["at_risk_intervention", name]), "playbooks.enabled"


@st.composite
def bad_structure(draw):
    section = draw(st.sampled_from(["state", "sources", "model", "escalation", "report", "retries", "schedules"]))
    value = draw(st.sampled_from([[1, 2], "text", 42]) if section != "schedules" else st.sampled_from(["daily", 42, {"a": 1}]))
    return _set(DEFAULTS, section, value), section


BROKEN_YAML = ["model:\n  method: [unclosed\n", "state: {url: sqlite:///x\n", "a: b\n  c: d\n", "- just\n- a list\n", "key: value\n\tbad: tab\n"]


@st.composite
def broken_yaml(draw):
    return draw(st.sampled_from(BROKEN_YAML)), None


MALFORMED = st.one_of(unknown_key(), bad_type(), bad_cron(), bad_url(), bad_bands(), unknown_playbook(), bad_structure(), broken_yaml())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=MALFORMED)
def test_given_a_malformed_config_when_validated_then_exit_2_naming_the_key_and_no_traceback(tmp_path, case):
    data, key = case
    path = tmp_path / "fuzz.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["config", "validate", str(path)])
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    unexpected = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not unexpected, "".join(traceback.format_exception(result.exception))
    assert "Traceback" not in output
    assert result.exit_code == 2, output
    if key is None:  # a YAML syntax error names the file and where, or the top-level shape
        assert str(path) in output and ("line" in output or "top level" in output), output
    else:
        assert key in output, (key, output)
