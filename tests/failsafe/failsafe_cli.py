"""Helpers of the failure-contract tests: a real `healthsync` subprocess against a sandbox.

The sandbox runs in the test process (its records, request log and faults are read and set
directly, the same state `POST /faults` and `GET /state` expose); every healthsync command is
the installed console script in a subprocess, talking to it over loopback HTTP through
`--sandbox READY_FILE`, exactly as a user's shell would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from healthsync.connectors.sandbox import Sandbox

BIN = Path(sys.executable).with_name("healthsync")

#: short retries, so "retries exhausted" and "unreachable" are reached in a second
FAST_RETRIES = {"HEALTHSYNC__RETRIES__MAX_ATTEMPTS": "2", "HEALTHSYNC__RETRIES__BASE_WAIT_S": "0.05",
                "HEALTHSYNC__RETRIES__MAX_WAIT_S": "0.1"}


def clean_env(state_url: str | None = None, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC")}
    if state_url:
        env["HEALTHSYNC__STATE__URL"] = state_url
    env.update(extra)
    return env


def healthsync(*args, env, cwd=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def one_json(r: subprocess.CompletedProcess) -> dict:
    """`--json` prints exactly one object on stdout, whatever happened."""
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"stdout must hold one JSON object, got: {r.stdout!r}\nstderr: {r.stderr}"
    return json.loads(lines[0])


def assert_no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr


def with_host(ready: Path, api: str, host: str) -> Path:
    """A copy of a ready file whose `api` points somewhere else (e.g. a closed port: unreachable)."""
    data = json.loads(ready.read_text())
    if api == "hubspot":
        data["hubspot"]["host"] = host
    elif api == "salesforce":
        data["salesforce"]["instance_url"] = host
    else:
        data["slack"]["base_url"] = host
    out = ready.with_name(f"{ready.stem}-{api}-moved.json")
    out.write_text(json.dumps(data))
    return out


def with_token(ready: Path, api: str, token: str) -> Path:
    data = json.loads(ready.read_text())
    if api == "hubspot":
        data["hubspot"]["access_token"] = token
    elif api == "salesforce":
        data["salesforce"]["access_token"] = token
        data["salesforce"]["password"] = "wrong-password-123"
    out = ready.with_name(f"{ready.stem}-{api}-badtoken.json")
    out.write_text(json.dumps(data))
    return out


def closed_port() -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def tasks_in(sb: Sandbox, crm: str) -> list[dict]:
    if crm == "salesforce":
        return [t for t in sb.records("salesforce", "Task") if not t.get("IsDeleted") and t.get("Healthsync_Key__c")]
    return [t for t in sb.records("hubspot", "tasks") if not t.get("archived") and t["properties"].get("healthsync_key")]


def scored_in(sb: Sandbox, crm: str) -> int:
    if crm == "salesforce":
        return sum(1 for a in sb.records("salesforce", "Account") if a.get("Health_Score__c") is not None)
    return sum(1 for c in sb.records("hubspot", "companies") if (c["properties"].get("health_score") or "") != "")
