"""Helpers of the packaging tests: the repository root and deploy/'s scripts run as the Dockerfile runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(script: str, *args: str, python: str = sys.executable, env: dict | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """One of deploy/'s shell scripts, as the Dockerfile runs it (from the repository root)."""
    full_env = {**os.environ, "PYTHON": python, **(env or {})}
    return subprocess.run(["sh", str(ROOT / "deploy" / script), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
