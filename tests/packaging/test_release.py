"""What a release carries besides the code: the version on the command line, the changelog, the license."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from packaging_helpers import ROOT

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_given_the_installed_package_when_asked_for_its_version_then_the_cli_prints_it_and_exits_0():
    done = subprocess.run([sys.executable, "-c", "from healthsync.sync.cli import main; main()", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"healthsync {VERSION}\n"


def test_given_the_changelog_then_it_follows_keep_a_changelog_and_has_a_section_for_this_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "keepachangelog.com" in text
    sections = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert sections[0] == ("Unreleased", "")
    assert (VERSION, sections[1][1]) == sections[1] and sections[1][1], "this version's section comes next, dated"
    kinds = set(re.findall(r"^### (\w+)$", text, re.M))
    assert kinds and kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_given_the_license_declared_in_pyproject_then_the_license_file_is_that_license():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
