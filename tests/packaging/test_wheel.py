"""The wheel a team installs: one import package, no build warnings, the version and extras it claims.

A slow test installs it into a fresh virtualenv with deploy/install.sh (the Dockerfile's install
step) and runs `healthsync` from there: only `healthsync` is importable, and a run works.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from packaging_helpers import ROOT, run_script

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: a warning raised by setuptools or the build backend (SetuptoolsDeprecationWarning: ..., BuildBackendWarning: ...)
BUILD_WARNING = re.compile(r"\b\w*Warning: ")
BRIEF_FOLDERS = ("config", "connectors", "engine", "sync", "playbooks")


def test_given_the_source_tree_when_the_wheel_is_built_then_setuptools_warns_about_nothing(built_wheel):
    _, output = built_wheel
    assert "Building wheel for healthsync" in output  # the backend's own output is in what we read
    assert [line.strip() for line in output.splitlines() if BUILD_WARNING.search(line)] == []


def test_given_the_wheel_then_it_holds_one_top_level_package_the_version_and_the_extras(built_wheel):
    wheel, _ = built_wheel
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(zf.read(info).decode())
    top_level = {n.split("/")[0] for n in names}
    assert top_level == {"healthsync", f"healthsync-{PROJECT['version']}.dist-info"}
    assert metadata["Version"] == PROJECT["version"]
    assert {"postgres", "snowflake", "bigquery"} <= set(metadata.get_all("Provides-Extra"))
    # package data that a run needs at run time
    for data in ("healthsync/config/default.yaml", "healthsync/playbooks/default.yaml",
                 "healthsync/sync/report/templates/report.html.j2", "healthsync/sync/migrations/script.py.mako"):
        assert data in names


def test_given_the_dependencies_then_every_one_that_a_major_release_would_break_has_an_upper_bound():
    unbounded_by_choice = {"pyarrow", "cryptography", "rich"}  # see the comment in pyproject.toml
    for requirement in PROJECT["dependencies"]:
        name = re.split(r"[<>=!\[ ]", requirement, maxsplit=1)[0].lower()
        if name not in unbounded_by_choice:
            assert "<" in requirement, f"{requirement}: no upper bound"


def _fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin" / "python"


@pytest.mark.slow
def test_given_the_wheel_installed_by_the_docker_install_script_into_a_fresh_venv_then_only_healthsync_imports_and_a_run_works(
    built_wheel, tmp_path
):
    wheel, _ = built_wheel
    python = _fresh_venv(tmp_path / "venv")
    done = run_script("install.sh", str(wheel.parent), python=str(python), timeout=900)  # pip's cache is used
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"healthsync {PROJECT['version']}" in done.stdout

    # the wheel's own files: one top-level import package (plus its metadata and the console script)
    probe = subprocess.run(
        [str(python), "-c",
         "import importlib.metadata as m, importlib.util as u, json;"
         "files = m.files('healthsync');"
         "print(json.dumps({'top': sorted({f.parts[0] for f in files if f.parts[0] != '..'}),"
         f"'bare': [n for n in {BRIEF_FOLDERS!r} if u.find_spec(n)],"
         "'psycopg': bool(u.find_spec('psycopg'))}))"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found == {"top": ["healthsync", f"healthsync-{PROJECT['version']}.dist-info"], "bare": [], "psycopg": True}

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    env.update({"HEALTHSYNC__SANDBOX__ACCOUNTS": "30", "HEALTHSYNC__STATE__URL": f"sqlite:///{work / 'state.db'}",
                "XDG_STATE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)})
    healthsync = str(python.parent / "healthsync")
    run = subprocess.run([healthsync, "run", "--json"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["mode"] == "sandbox" and summary["accounts_scored"] == 60
    assert all(w["records_changed"] > 0 and w["failed"] == 0 for w in summary["writes"].values())
    status = subprocess.run([healthsync, "status", "--json"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert [r["run_id"] for r in json.loads(status.stdout)["runs"]] == [summary["run_id"]]
