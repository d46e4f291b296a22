"""Config that fails early (issue 13 item 7), state that never depends on the working directory
(item 1), and no traceback for an ordinary mistake: all through the console script."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from healthsync.config.settings import DEFAULT_CONFIG_PATH

from failsafe_cli import assert_no_traceback, clean_env, healthsync, one_json

ROOT = Path(__file__).resolve().parents[2]
SECRET = "SECRETdbpass"


def _config(tmp_path: Path, data: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# ----------------------------------------------------------------------------- config validate


@pytest.mark.parametrize(
    "data, key, words",
    [
        ({"schedules": [{"job": "run", "cron": "99 * * * *"}]}, "schedules.0.cron", "99"),
        ({"schedules": [{"job": "run", "cron": "0 6 * * 8"}]}, "schedules.0.cron", "8"),
        ({"playbooks": {"enabled": ["at_risk_intervention", "no_such_playbook"]}}, "playbooks.enabled", "no_such_playbook"),
        ({"state": {"url": "not a url"}}, "state.url", "not a database URL"),
        # a PostgreSQL driver that is not installed (psycopg may be, with the postgres extra)
        ({"state": {"url": "postgresql+pg8000://hs@db/hs"}}, "state.url", "pip install 'healthsync[postgres]'"),
        ({"escalation": {"crm_record_url": "https://crm.example/{record}"}}, "escalation.crm_record_url", "{record}"),
        ({"escalation": {"crm_record_url": {"hubspot": "https://app.hubspot.com/{portal}/{id}"}}},
         "escalation.crm_record_url.hubspot", "{portal}"),
    ],
)
def test_given_what_a_run_would_trip_on_when_validated_then_exit_2_naming_the_key(tmp_path, data, key, words):
    if "pg8000" in json.dumps(data):
        try:
            import pg8000  # noqa: F401

            pytest.skip("pg8000 is installed here: the missing-driver case cannot be shown")
        except ImportError:
            pass
    r = healthsync("config", "validate", _config(tmp_path, data), env=clean_env())
    assert r.returncode == 2, r.stdout + r.stderr
    assert_no_traceback(r)
    assert key in r.stderr and words in r.stderr, r.stderr


def test_given_a_playbook_whose_template_is_missing_when_validated_then_exit_2_naming_it(tmp_path):
    playbooks = yaml.safe_load((ROOT / "playbooks" / "default.yaml").read_text())
    playbooks["playbooks"][0]["templates"]["subject"] = "missing_subject.j2"
    (tmp_path / "playbooks.yaml").write_text(yaml.safe_dump(playbooks))
    cfg = _config(tmp_path, {"playbooks": {"definitions": str(tmp_path / "playbooks.yaml")}})
    r = healthsync("config", "validate", cfg, env=clean_env())
    assert r.returncode == 2 and "missing_subject.j2" in r.stderr and "templates.subject" in r.stderr, r.stderr


def test_given_a_non_utf8_config_file_then_exit_2_naming_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("escalation:\n  vp: jos\xe9@example.com\n".encode("latin-1"))
    for args in (("config", "validate", path), ("run", "--config", path, "--json"), ("status", "--config", path)):
        r = healthsync(*args, env=clean_env())
        assert r.returncode == 2, (args, r.stderr)
        assert_no_traceback(r)
        assert str(path) in r.stderr + r.stdout and "UTF-8" in r.stderr + r.stdout


# ----------------------------------------------------------------------------- secrets in URLs


def test_given_a_password_in_the_state_url_then_config_show_status_and_errors_never_print_it(tmp_path):
    url = f"postgresql+psycopg://hs:{SECRET}@127.0.0.1:1/hs"
    from_yaml = _config(tmp_path, {"state": {"url": url}})
    runs = [
        healthsync("config", "show", "--config", from_yaml, env=clean_env()),
        healthsync("config", "validate", from_yaml, env=clean_env()),
        healthsync("status", "--config", from_yaml, "--json", env=clean_env()),
        healthsync("config", "show", env=clean_env(HEALTHSYNC__STATE__URL=url)),
        healthsync("run", "--json", env=clean_env(HEALTHSYNC__STATE__URL=url)),
    ]
    for r in runs:
        assert_no_traceback(r)
        assert SECRET not in r.stdout + r.stderr, r.stdout + r.stderr


def test_given_a_url_with_a_password_then_the_effective_config_shows_it_redacted():
    from healthsync.config.settings import load_settings

    settings = load_settings()
    settings.state.url = f"postgresql+psycopg://hs:{SECRET}@db/hs"
    assert settings.redacted()["state"]["url"] == "postgresql+psycopg://hs:***@db/hs"


# ----------------------------------------------------------------------------- bad paths


@pytest.mark.parametrize("kind", ["parent is a file", "is a folder", "garbage", "in /proc"])
def test_given_an_unusable_state_path_then_exit_2_naming_state_url_and_no_traceback(tmp_path, kind):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    (tmp_path / "a-folder").mkdir()
    url = {
        "parent is a file": f"sqlite:///{blocker}/state.db",
        "is a folder": f"sqlite:///{tmp_path / 'a-folder'}",
        "garbage": "::garbage::",
        "in /proc": "sqlite:////proc/healthsync/state.db",
    }[kind]
    commands = (["status", "--json"], ["run", "--json"])
    if kind == "garbage":
        commands += (["report", "--out", tmp_path / "r.html", "--json"],)
    for command in commands:
        r = healthsync(*command, env=clean_env(url))
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert_no_traceback(r)
        out = one_json(r)
        assert any("state.url" in e for e in out["errors"]), out


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_given_a_read_only_state_folder_then_exit_2(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    r = healthsync("status", "--json", env=clean_env(f"sqlite:///{folder}/state.db"))
    assert r.returncode == 2 and "state.url" in r.stdout
    assert_no_traceback(r)


def test_given_an_unwritable_output_then_exit_2_naming_the_option(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = healthsync("score", "--input", ROOT / "fixtures" / "portfolio", "--output", blocker / "out.csv", "--json", env=clean_env())
    assert r.returncode == 2 and "--output" in r.stdout, r.stdout + r.stderr
    assert_no_traceback(r)
    r = healthsync("report", "--out", tmp_path, "--json", env=clean_env(f"sqlite:///{tmp_path}/s.db"))
    assert r.returncode == 2 and "--out" in r.stdout and "folder" in r.stdout
    r = healthsync("calibrate", "--history", tmp_path, "--out", blocker / "overlay.yaml", "--json", env=clean_env())
    assert r.returncode == 2 and "--out" in r.stdout
    assert_no_traceback(r)


# ----------------------------------------------------------------------------- where state is


def test_given_a_config_file_then_state_sits_next_to_it_whatever_the_working_directory(tmp_path, world):
    sb, ready, _ = world(accounts=4, seed=21)
    home = tmp_path / "project"
    home.mkdir()
    cfg = _config(home, {"report": {"enabled": False}})
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    env = clean_env()  # no HEALTHSYNC__STATE__URL: the default location
    first = one_json(healthsync("run", "--config", cfg, "--sandbox", ready, "--json", env=env, cwd=home))
    assert first["state"] == str(home / ".healthsync" / "state.db")
    second = one_json(healthsync("run", "--config", cfg, "--sandbox", ready, "--json", env=env, cwd=elsewhere))
    assert second["state"] == first["state"]
    assert second["writes"]["salesforce"]["records_changed"] == 0 and second["tasks_created"] == 0  # nothing sent twice
    status = healthsync("status", "--config", cfg, "--json", env=env, cwd=tmp_path)
    assert [r["run_id"] for r in one_json(status)["runs"]] == [second["run_id"], first["run_id"]]
    assert not (elsewhere / ".healthsync").exists()
    text = healthsync("status", "--config", cfg, env=env, cwd=elsewhere)
    assert f"state: {home / '.healthsync' / 'state.db'}" in text.stderr


def test_given_no_config_file_then_state_is_in_the_per_user_state_dir_and_status_sees_the_embedded_run(tmp_path):
    xdg = tmp_path / "xdg"
    env = clean_env(XDG_STATE_HOME=str(xdg), HEALTHSYNC__SANDBOX__ACCOUNTS="4")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    run = one_json(healthsync("run", "--json", env=env, cwd=a))  # no credentials: the embedded sandbox
    assert run["mode"] == "sandbox" and run["state"] == str(xdg / "healthsync" / "state.db")
    status = one_json(healthsync("status", "--json", env=env, cwd=b))
    assert status["state"] == run["state"] and status["runs"][0]["run_id"] == run["run_id"]
    report = healthsync("report", "--out", tmp_path / "r.html", "--json", env=env, cwd=b)
    assert report.returncode == 0, report.stderr
    assert one_json(report)["state"] == run["state"]
