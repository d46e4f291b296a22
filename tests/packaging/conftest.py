"""A wheel built once per test session with deploy/build-wheel.sh (the Dockerfile's build step)."""

from __future__ import annotations

import pytest

from packaging_helpers import run_script


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory):
    """(wheel path, everything the build printed, pip verbose so setuptools' own warnings show)."""
    out = tmp_path_factory.mktemp("dist")
    done = run_script("build-wheel.sh", str(out), env={"PIP_VERBOSE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheels = list(out.glob("healthsync-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], done.stdout + done.stderr
