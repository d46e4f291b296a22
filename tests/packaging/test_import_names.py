"""Everything installs under one import package, `healthsync` (design.md, "Layout").

The repository keeps the folders the product brief fixes (config/, connectors/, engine/, sync/,
playbooks/); pyproject.toml maps them to `healthsync.config`, `healthsync.connectors`, ... A bare
`import engine` would only work from a checkout and would collide with other software once
installed, so no module may use one.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("config", "connectors", "engine", "sync", "playbooks")
BARE = re.compile(rf"^\s*(from|import)\s+({'|'.join(FOLDERS)})(\.|\s|$)", re.M)


def test_no_module_imports_a_folder_by_its_bare_name():
    offenders = []
    for folder in (*FOLDERS, "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for match in BARE.finditer(path.read_text(encoding="utf-8")):
                line = path.read_text(encoding="utf-8")[: match.start()].count("\n") + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert offenders == []


def test_installed_modules_live_under_healthsync():
    import healthsync.engine.scoring as scoring
    import healthsync.sync.cli as cli

    assert scoring.__name__.startswith("healthsync.")
    assert Path(cli.__file__).resolve().parent == ROOT / "sync"
