"""A wheel built once per test session with deploy/build-wheel.sh (the Dockerfile's build step)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_script(script: str, *args: str, python: str = sys.executable, env: dict | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """One of deploy/'s shell scripts, as the Dockerfile runs it (from the repository root)."""
    full_env = {**os.environ, "PYTHON": python, **(env or {})}
    return subprocess.run(["sh", str(ROOT / "deploy" / script), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory):
    """(wheel path, everything the build printed, pip verbose so setuptools' own warnings show)."""
    out = tmp_path_factory.mktemp("dist")
    done = run_script("build-wheel.sh", str(out), env={"PIP_VERBOSE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheels = list(out.glob("healthsync-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], done.stdout + done.stderr
