"""The production deployment: Dockerfile and compose.yaml say what the README promises.

Docker cannot run everywhere the suite runs: the image's build and install steps are the scripts
in deploy/, exercised in a clean virtualenv by test_wheel.py. Here the files themselves are
checked, and where a Docker engine answers the image is built and `healthsync --version` run in it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from packaging_helpers import ROOT

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_given_the_dockerfile_then_a_slim_non_root_image_installs_the_wheel_with_the_install_script_and_runs_the_scheduler():
    steps = _instructions()
    bases = [args for word, args in steps if word == "FROM"]
    assert bases and all(re.match(r"python:3\.\d+-slim\b", b) for b in bases)
    runs = [args for word, args in steps if word == "RUN"]
    assert any("deploy/build-wheel.sh" in r for r in runs)
    assert any("install.sh" in r for r in runs)
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("ENTRYPOINT", '["healthsync"]') in final and ("CMD", '["schedule"]') in final
    # everything the build step copies exists (a missing file fails `docker build` at once)
    for word, args in steps:
        if word == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"


def test_given_compose_then_the_scheduler_runs_next_to_postgresql_with_secrets_from_files_and_its_state_in_the_db_service():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    app, db = services["healthsync"], services["db"]
    assert app["build"] == "." and app["command"][0] == "schedule"
    assert db["image"].startswith("postgres:")
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert "POSTGRES_PASSWORD" not in db["environment"] and "POSTGRES_PASSWORD_FILE" in db["environment"]
    assert app["environment"]["HEALTHSYNC_SECRETS_FILE"].startswith("/run/secrets/")
    assert not re.search(r"(xoxb-|pat-|PRIVATE KEY)", (ROOT / "compose.yaml").read_text())
    # the secrets file it expects, from the example: the state URL names the db service's database
    example = (ROOT / "deploy" / "healthsync.env.example").read_text()
    url = re.search(r"^HEALTHSYNC__STATE__URL=(\S+)$", example, re.M).group(1)
    assert re.fullmatch(r"postgresql\+psycopg://healthsync:[^@]+@db:5432/healthsync", url)
    assert "deploy/secrets" in (ROOT / ".gitignore").read_text()


def test_given_the_container_config_with_the_example_secrets_then_it_validates_and_the_state_is_postgresql(tmp_path):
    from healthsync.config.settings import load_settings

    config = ROOT / "deploy" / "config.yaml"
    settings = load_settings(config, environ={"HEALTHSYNC_SECRETS_FILE": str(ROOT / "deploy" / "healthsync.env.example")})
    assert settings.state.url.startswith("postgresql+psycopg://") and "@db:5432/" in settings.state.url
    assert [s.job for s in settings.schedules] == ["run", "escalate"]
    assert settings.report.enabled and settings.report.path.startswith("/var/lib/healthsync/")


def _docker_works() -> str | None:
    """None when a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker command"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{json .ServerVersion}}"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"docker info failed: {exc}"
    if info.returncode != 0:
        return "no Docker engine answers `docker info` (the image itself is untested here; README says so)"
    return None


@pytest.mark.slow
def test_given_a_docker_engine_when_the_image_is_built_then_healthsync_version_runs_in_it():
    why_not = _docker_works()
    if why_not:
        pytest.skip(why_not)
    tag = f"healthsync-test:{VERSION}"
    build = subprocess.run(["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    try:
        ran = subprocess.run(["docker", "run", "--rm", tag, "--version"], capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip() == f"healthsync {VERSION}"
        user = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"], capture_output=True, text=True,
                              timeout=300)
        assert user.stdout.strip() not in ("", "0")
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=300)
